#!/bin/sh
# Build the ledger batch decoder fuzzer with clang (libFuzzer, ASan, UBSan), linking the
# ledger sources directly, write a seed corpus made with ledger_batch_encode, and fuzz.
#
# Usage: tests/fuzz/run.sh [SECONDS]     (default 60)
# Environment: FUZZ_OUT  output directory (default build-unit2/fuzz in the repository)
#              CC        compiler (default clang)
# Exits non-zero if the build fails or the fuzzer finds a crash; the crashing input is
# then in $FUZZ_OUT/artifacts/ and `$FUZZ_OUT/ledger_decode_fuzz FILE` replays it.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${FUZZ_OUT:-$root/build-unit2/fuzz}
cc=${CC:-clang}

mkdir -p "$out/corpus" "$out/artifacts"
rm -rf "$out/seeds"
mkdir -p "$out/seeds"

srcs=
for f in "$root"/ledger/*.c; do
    case $f in
    */demo.c) ;; # the demo program has its own main()
    *) srcs="$srcs $f" ;;
    esac
done
cflags="-std=gnu11 -g -O1 -fno-omit-frame-pointer -Wno-deprecated-declarations"
cflags="$cflags -I$root $(pkg-config --cflags lmdb msgpack libcrypto)"
libs="$(pkg-config --libs lmdb msgpack libcrypto) -pthread"
target="$root/tests/fuzz/ledger_decode_fuzz.c"

# shellcheck disable=SC2086 # word splitting of the flag and source lists is wanted
$cc $cflags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    "$target" $srcs $libs -o "$out/ledger_decode_fuzz"
# shellcheck disable=SC2086
$cc $cflags -fsanitize=address,undefined -fno-sanitize-recover=all -DLEDGER_FUZZ_SEEDS \
    "$target" $srcs $libs -o "$out/ledger_decode_seeds"

"$out/ledger_decode_seeds" "$out/seeds"

# New inputs go to corpus/ (kept between runs); seeds/ is read only.
exec "$out/ledger_decode_fuzz" -max_total_time="$secs" -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/" "$out/corpus" "$out/seeds"
