#!/usr/bin/env bash
# Load benchmark (not a test): N simulated nodes (default 50) start at the same moment
# against one `labimg serve --dhcp full`, then the same N against the reference
# tools (dnsmasq for DHCP and TFTP, nginx for HTTP), all inside network namespaces
# this script creates and removes on exit: one for the server, one per node, each
# node a veth into a bridge in the server's namespace. Every node runs a real client
# sequence:
#   FLOW=x86 (default): the iPXE/HTTP path. busybox udhcpc DISCOVER/REQUEST with the
#     PXE vendor class, architecture 0 and the iPXE user class; then, with curl, the
#     boot script named in the lease, the kernel and initrd named in the script, the
#     root image (labimg.root.url on the kernel line), the config bundle with the
#     script's token, and POST /v1/events (booted, k3s-started).
#   FLOW=pi5: the Raspberry Pi 5 path. udhcpc as a Pi 5 (PXE vendor class and the
#     option 97 GUID with `RPi5` and the serial); then the TFTP sequence with curl
#     --tftp-blksize 1468: <serial>/config.txt, the kernel and initramfs it names,
#     <serial>/cmdline.txt.
# The reference serves the same bytes: dnsmasq answers DHCP and serves the boot
# script (x86, one per node, with labimg's command line and token) or the Pi files
# over TFTP; nginx serves kernel, initrd, root image and a static copy of each
# node's config tar. nginx cannot take events, so the reference skips that step.
#
# A node's completion time runs from the common start to the last byte of its last
# step. A failed step (curl or udhcpc error, wrong size, not a tar, event refused)
# is counted and retried after 1 s, at most RETRIES times (default 2), as firmware
# retries; a node that still fails counts as not completed.
#
#   sudo bash netboot/bench/fifty-nodes.sh              # N=50 FLOW=x86
#   sudo N=100 FLOW=pi5 bash netboot/bench/fifty-nodes.sh
# Environment: N (1..150), FLOW (x86|pi5), TARGETS ("labimg reference"),
# RETRIES (2), STEP_TIMEOUT (s per transfer, 300), RUN_TIMEOUT (s per run, 1200).
# Needs root, busybox udhcpc, curl, dnsmasq, nginx, ip, jq, flock, tar.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for t in ip udhcpc curl dnsmasq nginx jq flock tar awk timeout; do
    command -v "$t" >/dev/null || { echo "missing host tool: $t" >&2; exit 1; }
done

n=${N:-50}
flow=${FLOW:-x86}
targets=${TARGETS:-labimg reference}
retries=${RETRIES:-2}
step_timeout=${STEP_TIMEOUT:-300}
run_timeout=${RUN_TIMEOUT:-1200}
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 150 ]; then
    echo "N must be a whole number from 1 to 150 (the DHCP pool), not '$n'" >&2; exit 1
fi
case $flow in x86 | pi5) ;; *) echo "FLOW must be x86 or pi5, not '$flow'" >&2; exit 1 ;; esac
for tgt in $targets; do
    case $tgt in labimg | reference) ;; *) echo "TARGETS holds labimg and/or reference, not '$tgt'" >&2; exit 1 ;; esac
done
for v in retries step_timeout run_timeout; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "${v^^} must be a whole number, not '${!v}'" >&2; exit 1; }
done

tag=lbf$$
srvns=$tag-s
srv=10.78.0.1
http_port=8080
nginx_port=8081
work=$(mktemp -d /tmp/labimg-fifty.XXXXXX)
pids=()

# Kills what runs inside this run's namespaces (and nothing else), then removes them.
ns_kill() { # <namespace>
    local p
    for p in $(ip netns pids "$1" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
}
cleanup() {
    local p ns
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for ns in $(ip netns list | awk -v t="$tag-" 'index($1, t) == 1 {print $1}'); do ns_kill "$ns"; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in $(ip netns list | awk -v t="$tag-" 'index($1, t) == 1 {print $1}'); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Foreground only: a function run with `&` is a subshell whose pid is not the
# program's. Background programs use `ip netns exec` directly, which execs them.
in_srv() { ip netns exec "$srvns" "$@"; }

# --- artifacts: a real build, reused when there is one ---------------------------
cargo build --release -q -p labimg
labimg=$repo/target/release/labimg
if [ "$flow" = x86 ]; then profile=proxmox; else profile=pi5; fi
# The newest build of the profile (BUILD=<folder> picks one).
find_build() {
    local d
    if [ -n "${BUILD:-}" ]; then
        if [ ! -f "$BUILD/netboot/netboot.json" ] || ! compgen -G "$BUILD/nodes/*/node.env" >/dev/null; then
            echo "BUILD=$BUILD: not a build folder with netboot/ and nodes/" >&2; exit 1
        fi
        echo "$BUILD"
        return 0
    fi
    while read -r _ d; do
        d=${d%manifest.json}
        if [ ! -f "$d/netboot/netboot.json" ] || [ ! -f "$d/manifest.json" ]; then continue; fi
        [ "$(jq -r .profile "$d/netboot/netboot.json")" = "$profile" ] || continue
        [ "$flow" = x86 ] || [ -f "$d/netboot/rpi/config.txt" ] || continue
        compgen -G "$d/nodes/*/node.env" >/dev/null || continue
        echo "${d%/}"
        return 0
    done < <(stat -c '%Y %n' target/bench/*/manifest.json target/qemu-tests/*/manifest.json 2>/dev/null | sort -rn)
    return 1
}
if build=$(find_build); then
    echo "# reusing the build $build"
else
    build=$repo/target/bench/fifty-$profile
    echo "# no $profile build with nodes/ found: building $build (minutes)"
    mkdir -p "$repo/target/bench"
    printf 'extends = "%s"\n\n[[nodes]]\nhostname = "bench-1"\nmac = "52:54:00:78:ff:01"\nrole = "server"\n' \
        "$repo/profiles/$profile.toml" > "$work/profile.toml"
    rm -rf "$build.tmp"
    timeout 3600 cargo run --release -q -- build --profile "$work/profile.toml" \
        --k3s-binary qemu-tests/stand-in/k3s --out "$build.tmp" >/dev/null 2>"$work/build.log" \
        || { tail -20 "$work/build.log" >&2; exit 1; }
    rm -rf "$build"
    mv "$build.tmp" "$build"
fi
echo "# kernel $(jq -r .kernel "$build/netboot/netboot.json"): $(stat -c %s "$build/netboot/$(jq -r .kernel "$build/netboot/netboot.json")") bytes$(
    [ "$flow" = pi5 ] && echo ", Pi kernel $(sed -n 's/^kernel=//p' "$build/netboot/rpi/config.txt"): $(stat -c %s "$build/netboot/rpi/$(sed -n 's/^kernel=//p' "$build/netboot/rpi/config.txt")" 2>/dev/null || echo "(from netboot/)") bytes")"
src_node=$(compgen -G "$build/nodes/*/node.env" | head -1)
src_node=${src_node%/node.env}

# The served folder: hard links where the filesystem allows (same bytes, no copy),
# never symlinks (the servers refuse paths that resolve outside their roots).
images=$work/images
mkdir -p "$images/$profile/nodes"
cp -al "$build/netboot" "$images/$profile/" 2>/dev/null || cp -a "$build/netboot" "$images/$profile/"
net=$images/$profile/netboot
ipxe_dir=$work/ipxe   # no flow here fetches an iPXE binary; labimg wants the folder
mkdir -p "$ipxe_dir"
[ -d "$repo/target/qemu-tests/ipxe" ] && cp -a "$repo/target/qemu-tests/ipxe/." "$ipxe_dir/"

mac_of() { printf '%s:00:%02x' "$([ "$flow" = x86 ] && echo 52:54:00:78 || echo d8:3a:dd:78)" "$1"; }
serial_of() { printf 'be%06x' "$1"; }
host_of() { printf 'fifty-%s-%03d' "$flow" "$1"; }
{
    printf '[default]\naction = "ignore"\n'
    for i in $(seq "$n"); do
        printf '\n[[node]]\nhostname = "%s"\nmac = "%s"\nrole = "agent"\nprofile = "%s"\n' \
            "$(host_of "$i")" "$(mac_of "$i")" "$profile"
        [ "$flow" = pi5 ] && printf 'serial = "%s"\n' "$(serial_of "$i")"
    done
} > "$work/inventory.toml"
for i in $(seq "$n"); do
    cp -a "$src_node" "$images/$profile/nodes/$(host_of "$i")"
done

# --- namespaces: the server's bridge, and one namespace per node -----------------
ip netns add "$srvns"
ip -n "$srvns" link set lo up
ip -n "$srvns" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$srvns" addr add "$srv/24" dev br0
ip -n "$srvns" link set br0 up
for i in $(seq "$n"); do
    ns=$tag-n$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 address "$(mac_of "$i")" type veth peer name "vn$i" netns "$srvns"
    ip -n "$srvns" link set "vn$i" master br0
    ip -n "$srvns" link set "vn$i" up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$ns" link set eth0 up
done

# udhcpc's event script: the lease's variables for the node, the address on eth0.
cat > "$work/udhcpc.sh" <<'EOF'
#!/bin/sh
case "$1" in
    bound | renew)
        env > "$BOUND_ENV"
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        ;;
    deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
EOF
chmod 755 "$work/udhcpc.sh"

# --- one node's client sequence -------------------------------------------------
# Writes $work/res/<target>/<i>: one line per attempt, "<step> ok|fail <epoch> <bytes>",
# and "done <epoch>" or "gave-up <epoch>" last.
node_run() { # <i> <target>
    local i=$1 target=$2 ns=$tag-n$1 dir=$work/node/$2/$1 res=$work/res/$2/$1
    local log=$dir/log mac serial boot script line kernel_url initrd_url root_url root_size
    local config_url token events_url tftp f kern initramfs extra=() host
    mac=$(mac_of "$i")
    serial=$(serial_of "$i")
    host=$(host_of "$i")
    mkdir -p "$dir"
    : > "$res"
    # DHCP with busybox udhcpc (3 discovers 1 s apart, per attempt).
    dhcp() {
        local a rc
        for ((a = 0; a <= retries; a++)); do
            [ "$a" = 0 ] || sleep 1
            rm -f "$dir/bound.env"
            rc=0
            ip netns exec "$ns" env BOUND_ENV="$dir/bound.env" timeout 20 \
                udhcpc -f -q -n -t 3 -T 1 -i eth0 -s "$work/udhcpc.sh" "${extra[@]}" \
                >>"$dir/udhcpc.log" 2>&1 || rc=$?
            if [ "$rc" = 0 ] && [ -s "$dir/bound.env" ]; then
                echo "dhcp ok $EPOCHREALTIME 0" >> "$res"
                return 0
            fi
            echo "dhcp: attempt $((a + 1)) got no lease (udhcpc exit $rc)" >> "$log"
            echo "dhcp fail $EPOCHREALTIME 0" >> "$res"
        done
        return 1
    }
    # One transfer with curl; <expect> is the byte count, "-" for any but none, "any"
    # for anything (an empty 204 too), "tar" for a tar.
    fetch() { # <step> <expect> <out> <url> [curl args]
        local step=$1 expect=$2 out=$3 url=$4 a rc got
        shift 4
        for ((a = 0; a <= retries; a++)); do
            [ "$a" = 0 ] || sleep 1
            rc=0
            got=$(ip netns exec "$ns" curl -sS --fail --max-time "$step_timeout" -o "$out" \
                -w '%{size_download}' "$@" "$url" 2>>"$log") || rc=$?
            got=${got%%.*}
            if [ "$rc" = 0 ] && case $expect in
                -) [ "${got:-0}" -gt 0 ] ;;
                tar) tar -tf "$out" >/dev/null 2>&1 ;;
                any) true ;;
                *) [ "$got" = "$expect" ] ;;
            esac; then
                echo "$step ok $EPOCHREALTIME $got" >> "$res"
                return 0
            fi
            echo "$step: attempt $((a + 1)) failed: $url (curl exit $rc, ${got:-0} bytes, expected $expect)" >> "$log"
            echo "$step fail $EPOCHREALTIME ${got:-0}" >> "$res"
        done
        return 1
    }
    event() { # <stage> <url>
        local body
        body=$(jq -cn --arg s "$1" --arg m "$mac" --arg h "$host" '{stage: $s, mac: $m, hostname: $h, detail: "fifty-nodes bench"}')
        fetch "event-$1" any "$dir/event-$1" "$2" -H 'Content-Type: application/json' --data-binary "$body"
    }
    sequence() {
        if [ "$flow" = x86 ]; then
            extra=(-V PXEClient:Arch:00000:UNDI:002001 -x 0x5d:0000 -x 0x4d:69505845)
        else
            # Architecture 0 and UNDI 2.1 (options 93, 94) as the Pi sends them.
            # Option 97: type 0, then "RPi5", board revision, the MAC's low 4 bytes and
            # the serial, little endian (classify.rs reads bytes 12..16 after the type).
            local m=${mac//:/} s
            s=$(serial_of "$i")
            extra=(-V PXEClient:Arch:00000:UNDI:002001 -x 0x5d:0000 -x 0x5e:010201 -O 43
                -x "0x61:00525069357041c000${m:4:8}${s:6:2}${s:4:2}${s:2:2}${s:0:2}")
        fi
        dhcp || return 1
        # shellcheck disable=SC2153  # lease variables from the udhcpc script
        boot=$(sed -n 's/^boot_file=//p' "$dir/bound.env")
        tftp=$(sed -n 's/^siaddr=//p' "$dir/bound.env")
        [ -n "$tftp" ] && [ "$tftp" != 0.0.0.0 ] || tftp=$(sed -n 's/^serverid=//p' "$dir/bound.env")
        if [ "$flow" = pi5 ]; then
            # The Pi bootloader goes on only with "Raspberry Pi Boot" in option 43.
            if ! grep -qi '^opt43=.*52617370626572727920506920426f6f74' "$dir/bound.env"; then
                echo "the lease has no option 43 with \"Raspberry Pi Boot\": not answered as a Pi" >> "$log"
                echo "dhcp fail $EPOCHREALTIME 0" >> "$res"
                return 1
            fi
            fetch config.txt - "$dir/config.txt" "tftp://$tftp/$serial/config.txt" --tftp-blksize 1468 || return 1
            kern=$(sed -n 's/^kernel=//p' "$dir/config.txt" | tail -1)
            initramfs=$(awk '$1 == "initramfs" {print $2}' "$dir/config.txt" | tail -1)
            if [ -z "$kern" ] || [ -z "$initramfs" ]; then
                echo "config.txt names no kernel or initramfs" >> "$log"
                return 1
            fi
            for f in "$kern" "$initramfs"; do
                fetch "$f" "$(cat "$work/size.$f" 2>/dev/null || echo -)" /dev/null \
                    "tftp://$tftp/$serial/$f" --tftp-blksize 1468 || return 1
            done
            fetch cmdline.txt - "$dir/cmdline.txt" "tftp://$tftp/$serial/cmdline.txt" --tftp-blksize 1468 || return 1
            return 0
        fi
        case $boot in
            http://*) fetch boot-script - "$dir/boot.ipxe" "$boot" || return 1 ;;
            ?*) fetch boot-script - "$dir/boot.ipxe" "tftp://$tftp/$boot" --tftp-blksize 1468 || return 1 ;;
            *) echo "the lease names no boot file" >> "$log"; return 1 ;;
        esac
        script=$(cat "$dir/boot.ipxe")
        line=$(grep -m1 '^kernel ' <<<"$script") || { echo "no kernel line in the script" >> "$log"; return 1; }
        kernel_url=$(awk '{print $2}' <<<"$line")
        initrd_url=$(awk '$1 == "initrd" {print $2}' <<<"$script")
        arg() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p" | tail -1; }
        root_url=$(arg labimg.root.url)
        root_size=$(arg labimg.root.size)
        config_url=$(arg labimg.config)
        token=$(arg labimg.token)
        events_url=$(arg labimg.events)
        fetch kernel "$(cat "$work/size.kernel")" /dev/null "$kernel_url" || return 1
        fetch initrd "$(cat "$work/size.initrd")" /dev/null "$initrd_url" || return 1
        fetch root "${root_size:--}" /dev/null "$root_url" || return 1
        fetch config tar "$dir/config.tar" "$config_url" -H "Authorization: Bearer $token" || return 1
        if [ -n "$events_url" ]; then
            event booted "$events_url" || return 1
            event k3s-started "$events_url" || return 1
        fi
    }
    # Everyone waits here until the main script drops its exclusive lock.
    : > "$work/ready/$target.$i"
    flock -s "$work/go.lock" true
    if sequence; then echo "done $EPOCHREALTIME" >> "$res"; else echo "gave-up $EPOCHREALTIME" >> "$res"; fi
}

# Starts N nodes at once against whatever serves the bridge now; waits (bounded).
run_nodes() { # <target>
    local target=$1 i t0 waited=0 wp=() p
    mkdir -p "$work/res/$target" "$work/node/$target" "$work/ready"
    exec {lock}>"$work/go.lock"
    flock -x "$lock"
    for i in $(seq "$n"); do
        node_run "$i" "$target" &
        wp+=("$!")
        pids+=("$!")
    done
    # Every node at its barrier (or about to take it: then it starts at once).
    until [ "$(find "$work/ready" -name "$target.*" | wc -l)" -ge "$n" ]; do sleep 0.1; done
    t0=$EPOCHREALTIME
    echo "$t0" > "$work/res/$target.t0"
    echo "# $target: $n nodes started at $(date -u +%T)"
    flock -u "$lock"
    exec {lock}>&-
    while [ "$(cat "$work"/res/"$target"/* 2>/dev/null | grep -c -E '^(done|gave-up) ')" -lt "$n" ]; do
        sleep 1
        waited=$((waited + 1))
        if [ "$waited" -ge "$run_timeout" ]; then
            echo "# $target: RUN_TIMEOUT ($run_timeout s) reached; stopping the nodes still running" >&2
            for i in $(seq "$n"); do ns_kill "$tag-n$i"; done
            break
        fi
    done
    for p in "${wp[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# Per run: completion times of the nodes that completed, failed attempts, bytes.
summarize() { # <target>
    local target=$1 t0
    t0=$(cat "$work/res/$target.t0")
    for i in $(seq "$n"); do
        awk -v t0="$t0" -v node="$i" '
            $2 == "ok" { bytes += $4; last = $3 }
            $2 == "fail" { fails++; failed[$1]++ }
            $1 == "dhcp" && $2 == "ok" { dhcp = $3 - t0 }
            $1 == "done" { done = 1 }
            END {
                steps = ""; for (s in failed) steps = steps s "x" failed[s] ","
                printf "%d %s %.3f %d %d %.3f %s\n", node, done ? "done" : "failed",
                    done ? last - t0 : -1, fails, bytes, dhcp, steps == "" ? "-" : steps
            }' "$work/res/$target/$i"
    done > "$work/$target.nodes"
    awk '
        { fails += $4; bytes += $5; if ($2 == "done") { t[++k] = $3; d[k] = $6 } else notdone++ }
        END {
            asort_n(t, k); asort_n(d, k)
            p50 = k ? t[int((k + 1) / 2)] : -1
            p99 = k ? t[int(0.99 * k + 0.999999)] : -1
            printf "%d %d %.2f %.2f %.2f %d %.1f %.2f\n", k, notdone, p50, p99, (k ? t[k] : -1),
                fails, bytes / NR / 1e6, k ? d[int((k + 1) / 2)] : -1
        }
        function asort_n(a, m,   i, j, v) {
            for (i = 2; i <= m; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
        }' "$work/$target.nodes"
}

# Per step, the median time (s from the start) at which nodes finished it.
step_line() { # <target>
    local t0
    t0=$(cat "$work/res/$1.t0")
    cat "$work/res/$1"/* | awk -v t0="$t0" '
        $2 == "ok" { k = $1; if (!(k in c)) order[++m] = k; v[k, ++c[k]] = $3 - t0 }
        END {
            for (i = 1; i <= m; i++) {
                k = order[i]
                for (a = 2; a <= c[k]; a++) {
                    x = v[k, a]
                    for (b = a - 1; b >= 1 && v[k, b] > x; b--) v[k, b + 1] = v[k, b]
                    v[k, b + 1] = x
                }
                printf "%s %.2f  ", k, v[k, int((c[k] + 1) / 2)]
            }
            printf "\n"
        }'
}

# --- expected sizes, seen by the clients ------------------------------------------
if [ "$flow" = x86 ]; then
    stat -c %s "$net/$(jq -r .kernel "$net/netboot.json")" > "$work/size.kernel"
    stat -c %s "$net/$(jq -r .initrd "$net/netboot.json")" > "$work/size.initrd"
else
    for f in "$net"/rpi/* "$net/$(jq -r .kernel "$net/netboot.json")" "$net/$(jq -r .initrd "$net/netboot.json")"; do
        stat -c %s "$f" > "$work/size.$(basename "$f")"
    done
fi

echo "# FLOW=$flow N=$n, $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A result
metrics_busy=-
metrics_queued=-

# --- labimg serve, full DHCP ---------------------------------------------------------
ip netns exec "$srvns" "$labimg" serve --images "$images" --inventory "$work/inventory.toml" \
    --interface br0 --dhcp full --http-addr "$srv:$http_port" --tftp-addr "$srv:69" \
    --pool-start 10.78.0.100 --pool-end 10.78.0.250 \
    --state-dir "$work/state" --ipxe-dir "$ipxe_dir" </dev/null >"$work/labimg.log" 2>&1 &
labimg_pid=$!
pids+=("$labimg_pid")
for i in $(seq 100); do
    in_srv curl -sf --max-time 2 "http://$srv:$http_port/healthz" >/dev/null && break
    if ! kill -0 "$labimg_pid" 2>/dev/null || [ "$i" = 100 ]; then
        echo "labimg serve did not come up:" >&2; tail -20 "$work/labimg.log" >&2; exit 1
    fi
    sleep 0.2
done

# What the reference will serve, taken from labimg before any node runs: each x86
# node's boot script (its token; tokens are kept in the state folder) and config tar,
# each Pi's generated cmdline.txt.
mkdir -p "$work/tftp" "$work/configs"
for i in $(seq "$n"); do
    mac=$(mac_of "$i")
    if [ "$flow" = x86 ]; then
        in_srv curl -sf --max-time 10 -o "$work/boot.$i.ipxe" "http://$srv:$http_port/boot.ipxe?mac=$mac"
        tok=$(grep -m1 '^kernel ' "$work/boot.$i.ipxe" | tr ' ' '\n' | sed -n 's/^labimg.token=//p')
        cfg=$(grep -m1 '^kernel ' "$work/boot.$i.ipxe" | tr ' ' '\n' | sed -n 's/^labimg.config=//p')
        if [ -z "$tok" ] || [ -z "$cfg" ]; then
            echo "boot script for $mac has no token or config URL:" >&2; cat "$work/boot.$i.ipxe" >&2; exit 1
        fi
        in_srv curl -sf --max-time 10 -H "Authorization: Bearer $tok" -o "$work/configs/$i.tar" "$cfg"
        sed -e "s#http://$srv:$http_port/images/#http://$srv:$nginx_port/images/#g" \
            -e "s#labimg.config=[^ ]*#labimg.config=http://$srv:$nginx_port/config/$i.tar#" \
            -e 's# labimg.events=[^ ]*##' "$work/boot.$i.ipxe" > "$work/tftp/h$i.ipxe"
        ! grep -q ":$http_port/" "$work/tftp/h$i.ipxe" \
            || { echo "the reference boot script still points at labimg:" >&2; cat "$work/tftp/h$i.ipxe" >&2; exit 1; }
    else
        s=$(serial_of "$i")
        mkdir -p "$work/tftp/$s"
        in_srv curl -sf --max-time 10 --tftp-blksize 1468 -o "$work/tftp/$s/cmdline.txt" "tftp://$srv/$s/cmdline.txt"
        for f in "$net"/rpi/*; do
            [ "$(basename "$f")" = cmdline.txt ] || ln "$f" "$work/tftp/$s/" 2>/dev/null || cp "$f" "$work/tftp/$s/"
        done
    fi
done

if [[ " $targets " == *" labimg "* ]]; then
    run_nodes labimg
    result[labimg]=$(summarize labimg)
    metrics=$(in_srv curl -sf --max-time 5 "http://$srv:$http_port/metrics" || true)
    metrics_busy=$(awk '/^labimg_tftp_requests_total/ && /result="busy"/ {s += $2} END {print s + 0}' <<<"$metrics")
    metrics_queued=$(awk '/^labimg_tftp_requests_total/ && /result="queued"/ {s += $2} END {print s + 0}' <<<"$metrics")
    registered=$(in_srv curl -sf --max-time 5 "http://$srv:$http_port/v1/nodes" \
        | jq '[.nodes[] | select(any(.events[]?; .stage == "k3s-started"))] | length' 2>/dev/null || echo "?")
fi
kill "$labimg_pid" 2>/dev/null || true
wait "$labimg_pid" 2>/dev/null || true

# --- reference: dnsmasq (DHCP + TFTP) and nginx --------------------------------------
if [[ " $targets " == *" reference "* ]]; then
    {
        echo "dhcp-range=10.78.0.100,10.78.0.250,255.255.255.0,1h"
        echo "dhcp-userclass=set:ipxe,iPXE"
        if [ "$flow" = x86 ]; then
            for i in $(seq "$n"); do
                echo "dhcp-host=$(mac_of "$i"),set:h$i"
                echo "dhcp-boot=tag:ipxe,tag:h$i,h$i.ipxe"
            done
        else
            echo 'pxe-service=0,"Raspberry Pi Boot"'
        fi
    } > "$work/dnsmasq.conf"
    ip netns exec "$srvns" dnsmasq --keep-in-foreground --conf-file="$work/dnsmasq.conf" --port=0 --user=root \
        --interface=br0 --bind-interfaces --pid-file= --log-facility="$work/dnsmasq.log" \
        --dhcp-leasefile="$work/dnsmasq.leases" --enable-tftp --tftp-root="$work/tftp" \
        --tftp-max=1000 --no-ping </dev/null >"$work/dnsmasq.out" 2>&1 &
    pids+=("$!")
    mkdir -p "$work/nginx"
    cat > "$work/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen $srv:$nginx_port;
        location /images/$profile/ { alias $net/; }
        location /config/ { alias $work/configs/; }
    }
}
EOF
    ip netns exec "$srvns" nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" </dev/null >"$work/nginx/out.log" 2>&1 &
    pids+=("$!")
    probe=h1.ipxe
    [ "$flow" = pi5 ] && probe=$(serial_of 1)/config.txt
    for i in $(seq 50); do
        in_srv curl -sf --max-time 2 -o /dev/null "tftp://$srv/$probe" \
            && in_srv curl -sf --max-time 2 -o /dev/null -r 0-0 "http://$srv:$nginx_port/images/$profile/netboot.json" && break
        [ "$i" = 50 ] && { echo "dnsmasq or nginx did not come up:" >&2; cat "$work/dnsmasq.out" "$work/dnsmasq.log" "$work/nginx/error.log" >&2; exit 1; }
        sleep 0.2
    done
    run_nodes reference
    result[reference]=$(summarize reference)
fi

echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== FLOW=$flow N=$n: completion time from the common start to each node's last byte (s)"
printf '%-10s %9s %8s %8s %8s %8s %15s %9s %8s\n' server completed "p50" "p99" max "DHCP p50" "failed attempts" "MB/node" "not done"
for tgt in $targets; do
    read -r k notdone p50 p99 max fails mb dhcp <<<"${result[$tgt]}"
    printf '%-10s %6d/%-3d %8s %8s %8s %8s %15d %9s %8d\n' "$tgt" "$k" "$n" "$p50" "$p99" "$max" "$dhcp" "$fails" "$mb" "$notdone"
done
echo "median time each step ended (s from the start):"
for tgt in $targets; do printf '  %-10s %s\n' "$tgt" "$(step_line "$tgt")"; done
if [ -n "${result[labimg]:-}" ] && [ -n "${result[reference]:-}" ]; then
    read -r _ _ lp50 lp99 lmax _ <<<"${result[labimg]}"
    read -r _ _ rp50 rp99 rmax _ <<<"${result[reference]}"
    awk -v a="$lp50" -v b="$rp50" -v c="$lp99" -v d="$rp99" -v e="$lmax" -v f="$rmax" 'BEGIN {
        printf "ratio labimg/reference: p50 %s  p99 %s  max %s (lower is better)\n",
            (b > 0 ? sprintf("%.2f", a / b) : "-"), (d > 0 ? sprintf("%.2f", c / d) : "-"), (f > 0 ? sprintf("%.2f", e / f) : "-") }'
fi
for tgt in $targets; do
    if grep -q failed "$work/$tgt.nodes" || awk '$4 > 0 {found = 1} END {exit !found}' "$work/$tgt.nodes"; then
        echo "-- $tgt: nodes with failed attempts (node, state, seconds, failed attempts, bytes, dhcp s, steps):"
        awk '$2 == "failed" || $4 > 0' "$work/$tgt.nodes" | head -20
        first=$(awk '$2 == "failed" || $4 > 0 {print $1; exit}' "$work/$tgt.nodes")
        echo "   first such node's log:"
        sed 's/^/   /' "$work/node/$tgt/$first/log" | head -10
    fi
done
if [ "$flow" = x86 ]; then
    echo "note: the reference skips POST /v1/events (nginx cannot take them); labimg serves all HTTP (its TFTP bound does not apply)."
    [ -n "${registered:-}" ] && echo "labimg /v1/nodes: $registered of $n nodes with a k3s-started event"
else
    echo "note: labimg serve runs 64 TFTP transfers at once (tftp_max_transfers); a request beyond that waits up to 20 s for a slot, then gets TFTP error 0 'server busy, retry later'."
    echo "      each node holds at most one transfer at a time, so N nodes need up to N slots: requests that waited here (labimg_tftp_requests_total{result=\"queued\"}): $metrics_queued, refused (result=\"busy\"): $metrics_busy."
fi
