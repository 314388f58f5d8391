# lib.sh — helpers for shell tests: sourced by tests/test_*.sh.
# Each check prints "PASS name" or "FAIL name"; tests/run.sh counts them.
: "${SAFE_BIN:?run through make test}"
PATH="$SAFE_BIN:$PATH"
DATA="${SAFE_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/safe-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1${2:+: $2}"; }
# check NAME CMD...: pass when CMD succeeds.
check() { name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
# expect_status NAME STATUS CMD...: pass when CMD exits with STATUS.
expect_status() {
    name=$1 want=$2; shift 2
    "$@" >"$TMP/out" 2>"$TMP/err"; got=$?
    if [ "$got" -eq "$want" ]; then pass "$name"; else fail "$name" "exit $got, wanted $want: $(head -c 300 "$TMP/err")"; fi
}
