#!/bin/sh
# Build the fuzzers with clang (libFuzzer, ASan, UBSan), linking the sources directly, write
# their seed corpora, and fuzz each in turn:
#   ledger_decode_fuzz  ledger_batch_decode() (seeds made with ledger_batch_encode)
#   rpc_decode_fuzz     the wire protocol's request and response decoders and its framer
#                       (seeds: valid bodies made with rpc_request_encode/rpc_response_encode)
#
# Usage: tests/fuzz/run.sh [SECONDS]     (default 60, for each fuzzer)
# Environment: FUZZ_OUT  output directory (default build-unit2/fuzz in the repository)
#              CC        compiler (default clang)
# Exits non-zero if a build fails or a fuzzer finds a crash (with the exit status of the
# first fuzzer that failed; both always run). The crashing input is then in
# $FUZZ_OUT/artifacts/ (the rpc fuzzer's prefixed rpc-) and `$FUZZ_OUT/ledger_decode_fuzz
# FILE` or `$FUZZ_OUT/rpc_decode_fuzz FILE` replays it. Corpora are kept between runs in
# $FUZZ_OUT/corpus (ledger) and $FUZZ_OUT/rpc-corpus.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${FUZZ_OUT:-$root/build-unit2/fuzz}
cc=${CC:-clang}

mkdir -p "$out/corpus" "$out/rpc-corpus" "$out/artifacts"
rm -rf "$out/seeds" "$out/rpc-seeds"
mkdir -p "$out/seeds" "$out/rpc-seeds"

srcs=
for f in "$root"/ledger/*.c "$root"/wire/*.c; do
    case $f in
    */demo.c) ;; # the demo program has its own main()
    *) srcs="$srcs $f" ;;
    esac
done
cflags="-std=gnu11 -g -O1 -fno-omit-frame-pointer -Wno-deprecated-declarations"
cflags="$cflags -I$root $(pkg-config --cflags lmdb msgpack libcrypto)"
libs="$(pkg-config --libs lmdb msgpack libcrypto) -pthread"
target="$root/tests/fuzz/ledger_decode_fuzz.c"

# The protocol needs only its own file, the command codec and the bounded reader.
rpc_srcs="$root/wire/proto.c $root/wire/cmd.c $root/wire/mp.c"
rpc_libs="$(pkg-config --libs msgpack)"
rpc_target="$root/tests/fuzz/rpc_decode_fuzz.c"

# shellcheck disable=SC2086 # word splitting of the flag and source lists is wanted
$cc $cflags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    "$target" $srcs $libs -o "$out/ledger_decode_fuzz"
# shellcheck disable=SC2086
$cc $cflags -fsanitize=address,undefined -fno-sanitize-recover=all -DLEDGER_FUZZ_SEEDS \
    "$target" $srcs $libs -o "$out/ledger_decode_seeds"
# shellcheck disable=SC2086
$cc $cflags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    "$rpc_target" $rpc_srcs $rpc_libs -o "$out/rpc_decode_fuzz"
# shellcheck disable=SC2086
$cc $cflags -fsanitize=address,undefined -fno-sanitize-recover=all -DRPC_FUZZ_SEEDS \
    "$rpc_target" $rpc_srcs $rpc_libs -o "$out/rpc_decode_seeds"

"$out/ledger_decode_seeds" "$out/seeds"
"$out/rpc_decode_seeds" "$out/rpc-seeds"

# New inputs go to the corpus directories (kept between runs); the seeds are read only.
status=0
"$out/ledger_decode_fuzz" -max_total_time="$secs" -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/" "$out/corpus" "$out/seeds" || status=$?
rpc_status=0
"$out/rpc_decode_fuzz" -max_total_time="$secs" -max_len=16384 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/rpc-" "$out/rpc-corpus" "$out/rpc-seeds" || rpc_status=$?
if [ "$status" -eq 0 ]; then
    status=$rpc_status
fi
exit "$status"
