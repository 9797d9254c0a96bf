#!/bin/sh
# Build the fuzzers with clang (libFuzzer, ASan, UBSan), linking the sources directly, write
# their seed corpora, and fuzz each in turn:
#   ledger_decode_fuzz     ledger_batch_decode() (seeds made with ledger_batch_encode)
#   rpc_decode_fuzz        the wire protocol's request and response decoders and its framer
#                          (seeds: valid bodies made with rpc_request_encode/rpc_response_encode)
#   peer_handshake_fuzz    libraft's TCP transport reading a peer connection's handshake, on a
#                          real raft_uv_tcp listener on loopback (seeds: a valid handshake, an
#                          unterminated address, an oversized one)
#   peer_message_fuzz      libraft's decoding of a peer's message: uvDecodeMessage(), then
#                          uvDecodeEntriesBatch() and the entries' configurations (seeds: one
#                          message of each type, made with uvEncodeMessage)
# The peer fuzzers build libraft's own sources from the patched tree a CMake configure
# extracts (third_party/libraft), so they fuzz the code tallyd runs.
#
# Usage: tests/fuzz/run.sh [SECONDS]     (default 60, for each fuzzer)
# Environment: FUZZ_OUT     output directory (default build-unit2/fuzz in the repository)
#              CC           compiler (default clang)
#              LIBRAFT_SRC  the patched libraft tree (default build/third_party/libraft/src/
#                           raft-0.22.1, which `cmake -S . -B build` makes; `make fuzz` sets it)
# Exits non-zero if a build fails or a fuzzer finds a crash (with the exit status of the
# first fuzzer that failed; all always run). The crashing input is then in
# $FUZZ_OUT/artifacts/ (prefixed rpc-, handshake- or message- but for the ledger fuzzer's),
# and `$FUZZ_OUT/<fuzzer> FILE` replays it. Corpora are kept between runs in
# $FUZZ_OUT/corpus (ledger), $FUZZ_OUT/rpc-corpus, handshake-corpus and message-corpus.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${FUZZ_OUT:-$root/build-unit2/fuzz}
cc=${CC:-clang}
raft=${LIBRAFT_SRC:-$root/build/third_party/libraft/src/raft-0.22.1}

if [ ! -f "$raft/include/raft.h" ] || [ ! -f "$raft/src/uv_encoding.c" ]; then
    echo "run.sh: no patched libraft tree at $raft: configure a build first" \
        "(cmake -S . -B build) or set LIBRAFT_SRC" >&2
    exit 2
fi

for d in corpus rpc-corpus handshake-corpus message-corpus artifacts; do
    mkdir -p "$out/$d"
done
for d in seeds rpc-seeds handshake-seeds message-seeds; do
    rm -rf "${out:?}/$d"
    mkdir -p "$out/$d"
done

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

# libraft as its CMake build compiles it (third_party/libraft/CMakeLists.txt), its private
# headers quoted only (its uv.h would hide libuv's), its own warnings not ours.
raft_flags="-D_GNU_SOURCE -DNDEBUG -DV0_ENABLED -I$raft/include -iquote $raft/src -w"
raft_libs="$(pkg-config --libs libuv)"
hs_srcs="$raft/src/uv_tcp.c $raft/src/uv_tcp_listen.c $raft/src/uv_tcp_connect.c"
hs_srcs="$hs_srcs $raft/src/uv_ip.c $raft/src/heap.c $raft/src/err.c"
msg_srcs="$raft/src/uv_encoding.c $raft/src/configuration.c $raft/src/heap.c $raft/src/err.c"
hs_target="$root/tests/fuzz/peer_handshake_fuzz.c"
msg_target="$root/tests/fuzz/peer_message_fuzz.c"

fuzz="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all"
seeds="-fsanitize=address,undefined -fno-sanitize-recover=all"
# shellcheck disable=SC2086 # word splitting of the flag and source lists is wanted
$cc $cflags $fuzz "$target" $srcs $libs -o "$out/ledger_decode_fuzz"
# shellcheck disable=SC2086
$cc $cflags $seeds -DLEDGER_FUZZ_SEEDS "$target" $srcs $libs -o "$out/ledger_decode_seeds"
# shellcheck disable=SC2086
$cc $cflags $fuzz "$rpc_target" $rpc_srcs $rpc_libs -o "$out/rpc_decode_fuzz"
# shellcheck disable=SC2086
$cc $cflags $seeds -DRPC_FUZZ_SEEDS "$rpc_target" $rpc_srcs $rpc_libs -o "$out/rpc_decode_seeds"
# shellcheck disable=SC2086
$cc $cflags $raft_flags $fuzz "$hs_target" $hs_srcs $raft_libs -o "$out/peer_handshake_fuzz"
# shellcheck disable=SC2086
$cc $cflags $raft_flags $seeds -DPEER_FUZZ_SEEDS "$hs_target" $hs_srcs $raft_libs \
    -o "$out/peer_handshake_seeds"
# shellcheck disable=SC2086
$cc $cflags $raft_flags $fuzz "$msg_target" $msg_srcs $raft_libs -o "$out/peer_message_fuzz"
# shellcheck disable=SC2086
$cc $cflags $raft_flags $seeds -DPEER_FUZZ_SEEDS "$msg_target" $msg_srcs $raft_libs \
    -o "$out/peer_message_seeds"

"$out/ledger_decode_seeds" "$out/seeds"
"$out/rpc_decode_seeds" "$out/rpc-seeds"
"$out/peer_handshake_seeds" "$out/handshake-seeds"
"$out/peer_message_seeds" "$out/message-seeds"

# New inputs go to the corpus directories (kept between runs); the seeds are read only.
status=0
run_fuzzer() { # NAME MAX_LEN ARTIFACT_PREFIX CORPUS SEEDS
    rv=0
    "$out/$1" -max_total_time="$secs" -max_len="$2" -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$3" "$out/$4" "$out/$5" || rv=$?
    if [ "$status" -eq 0 ]; then
        status=$rv
    fi
}
run_fuzzer ledger_decode_fuzz 8192 "" corpus seeds
run_fuzzer rpc_decode_fuzz 16384 rpc- rpc-corpus rpc-seeds
# A handshake is read to at most 24 bytes and a 512-byte address (patch 0007).
run_fuzzer peer_handshake_fuzz 1024 handshake- handshake-corpus handshake-seeds
run_fuzzer peer_message_fuzz 8192 message- message-corpus message-seeds
exit "$status"
