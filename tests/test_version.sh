# test_version.sh — every tool's --version has the one format (man pages, "--version"):
#   safe-X VERSION
#   devices: cpu[ cuda]
#   data parallel: MPI NCCL | MPI | NCCL | none
# and the build lines are the same in every tool of a build. Run through make test.
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.." || exit 1

version=$(sed -n 's/^#define SAFE_VERSION "\(.*\)"$/\1/p' lib/common.h)
check version_known [ -n "$version" ]
first=""
for src in tools/safe-*.c; do
    tool=$(basename "$src" .c)
    "$tool" --version >"$TMP/v" 2>"$TMP/v.err"
    check "${tool}_version_exit0" [ $? -eq 0 ]
    check "${tool}_version_quiet_stderr" [ ! -s "$TMP/v.err" ]
    check "${tool}_version_line1" [ "$(sed -n 1p "$TMP/v")" = "$tool $version" ]
    check "${tool}_version_build_lines" sh -c "[ \$(wc -l <'$TMP/v') -eq 3 ] &&
        sed -n 2p '$TMP/v' | grep -Eqx 'devices: cpu( cuda)?' &&
        sed -n 3p '$TMP/v' | grep -Eqx 'data parallel: (MPI NCCL|MPI|NCCL|none)'"
    if [ -z "$first" ]; then
        first=$tool
        sed 1d "$TMP/v" >"$TMP/build_lines"
    else
        check "${tool}_version_same_build_as_$first" sh -c "sed 1d '$TMP/v' | cmp -s - '$TMP/build_lines'"
    fi
done
# safe-pid's short option says the same
check safe-pid_short_V [ "$(safe-pid -V)" = "$(safe-pid --version)" ]
