#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# qemu.sh - boot a real Linux guest under QEMU 10 (TCG) against this project's
# vhost-user-blk daemon, with no IOMMU, with virtio-iommu and with intel-iommu.
#
# Usage: tests/e2e/qemu.sh [--setup] [--strict] [--iommu "none virtio intel"]
#                          [--queues N] [--workdir DIR] [--runs N] [-- BOOT.PY ARGS...]
#
#   --setup        (re)run harness/setup.sh first (root, apt, downloads QEMU 10 and
#                  the Linux 6.12 guest kernel from the machine's Debian sources;
#                  done automatically when WORKDIR is not prepared yet)
#   --strict       also run every mode with the guest's iommu.strict=1 (many more
#                  IOTLB invalidations)
#   --iommu LIST   the modes to run (default: "none virtio intel")
#   --workdir DIR  harness work directory (default: $E2E_WORKDIR or target/e2e)
#   --runs N       boot each mode N times (default 1)
#   --queues N     request queues of the daemon and the device (default 1)
#
# Example, the larger multi-queue test:
#   tests/e2e/qemu.sh --queues 2 -- --smp 2 --sectors 16384 --jobs 8
#
# For each boot the daemon (the vhost-user-dma `vhost-user-blk` example, i.e.
# what `vm-dma serve` runs) is started on a fresh copy of the test disk, serves
# exactly one connection, and boot.py checks the guest's `E2E: PASS` line and the
# written pattern in the daemon's image. Exit status 0 only if every boot passed.
#
# Needs root for the setup step (apt-get). Not part of .ci/run: it downloads.
# The harness (tests/e2e/harness/) is a copy of the project's shared e2e kit; see
# its README.md for what QEMU demands of a back-end and for boot.py's options.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HARNESS=$HERE/harness
SETUP=0
STRICT=0
MODES="none virtio intel"
RUNS=1
QUEUES=1
WORKDIR=${E2E_WORKDIR:-$ROOT/target/e2e}
EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
    --setup) SETUP=1 ;;
    --strict) STRICT=1 ;;
    --iommu) MODES=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --queues) QUEUES=$2; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h | --help) awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "qemu.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
export E2E_WORKDIR=$WORKDIR

if [ "$SETUP" = 1 ] || [ ! -x "$WORKDIR/qemu-10.sh" ] || [ ! -e "$WORKDIR/vmlinux-6.12" ] ||
    [ ! -e "$WORKDIR/initrd-6.12.gz" ] || [ ! -e "$WORKDIR/disk.img" ]; then
    echo "qemu.sh: preparing $WORKDIR (harness/setup.sh)" >&2
    bash "$HARNESS/setup.sh" "$WORKDIR" --without-6.1
fi

echo "qemu.sh: building the daemon" >&2
(cd "$ROOT" && cargo build --release -q -p vhost-user-dma --example vhost-user-blk)
DAEMON=$ROOT/target/release/examples/vhost-user-blk
SOCK=$WORKDIR/vhost-blk.sock
IMG=$WORKDIR/daemon.img
mkdir -p "$WORKDIR/logs"

DPID=""
stop_daemon() {
    if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
        kill "$DPID" 2>/dev/null || true
    fi
    [ -z "$DPID" ] || wait "$DPID" 2>/dev/null || true
    DPID=""
}
trap stop_daemon EXIT

FAILED=0
RESULTS=()
STRICTS=("")
[ "$STRICT" = 0 ] || STRICTS+=("--guest-strict")
for mode in $MODES; do
    for strict in "${STRICTS[@]}"; do
        for run in $(seq 1 "$RUNS"); do
            name="$mode${strict:+ strict} q=$QUEUES #$run"
            rm -f "$SOCK"
            cp --sparse=always "$WORKDIR/disk.img" "$IMG"
            dlog=$WORKDIR/logs/daemon-$mode${strict:+-strict}-$run.log
            VHOST_USER_DMA_LOG=${VHOST_USER_DMA_LOG:-info} \
                "$DAEMON" --socket-path "$SOCK" --disk "$IMG" --queues "$QUEUES" --connections 1 > "$dlog" 2>&1 &
            DPID=$!
            t0=$(date +%s.%N)
            set +e
            out=$(python3 "$HARNESS/boot.py" -q --socket "$SOCK" --iommu "$mode" $strict --num-queues "$QUEUES" \
                --verify-image "$IMG" "${EXTRA[@]}" 2>&1)
            rc=$?
            set -e
            t1=$(date +%s.%N)
            stop_daemon
            secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
            if [ $rc = 0 ]; then
                RESULTS+=("PASS  $name  ${secs}s  $(echo "$out" | grep -o 'E2E: PASS.*' | head -1)")
            else
                FAILED=1
                RESULTS+=("FAIL  $name  ${secs}s  rc=$rc")
                echo "$out" >&2
                echo "--- daemon log ($dlog):" >&2
                tail -20 "$dlog" >&2 || true
            fi
            echo "${RESULTS[-1]}"
        done
    done
done

echo
echo "qemu.sh summary ($(date -u +%Y-%m-%dT%H:%MZ); boot.py args: ${EXTRA[*]:-none}; harness QEMU 10: $("$WORKDIR/qemu-10.sh" --version | head -1)):"
printf '  %s\n' "${RESULTS[@]}"
exit $FAILED
