#!/usr/bin/env bash
# Benchmark (not a test): the labimg netboot appliance against the reference tools,
# in the same run on the same machine, all inside a throw-away network namespace:
#   (a) PXE boot of an x86_64 VM (BIOS and UEFI; QEMU's iPXE ROM, TCG) to the k3s
#       STAND-IN: `labimg serve --dhcp full` (DHCP, then kernel/initrd over HTTP)
#       against dnsmasq (DHCP + TFTP: boot script, kernel and initrd over TFTP), and
#       labimg in proxy mode beside a separate DHCP server. All boot the same kernel,
#       initrd and command line; root image, config and events come from labimg's
#       HTTP server in every case, so only the boot path differs. A table gives the
#       time from power-on to each milestone as the console and the server saw it.
#   (b) TFTP throughput, one 50 MiB file, curl with blksize 1468: labimg vs dnsmasq.
#   (c) HTTP throughput, the root image, curl: labimg vs nginx.
# The ratios are what matters: the machine is shared, absolute figures drift. Each
# flow boots BOOTS times (default 3) and counts the median boot.
#
#   sudo bash netboot/bench/pxe-vs-dnsmasq.sh
# Needs root (namespaces, taps), qemu-system-x86_64, dnsmasq, nginx, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, tap devices)" >&2; exit 1; }
for t in qemu-system-x86_64 qemu-img dnsmasq nginx curl ip jq bc; do
    command -v "$t" >/dev/null || { echo "missing host tool: $t" >&2; exit 1; }
done

ns=labimg-bench-$$
srv=10.77.9.1
http_port=8080
nginx_port=8081
mac=52:54:00:77:09:01
host=bench-cp-1
boot_timeout=900   # one TCG boot, with other VMs sharing the cores
# Flows beyond BIOS full mode and the dnsmasq reference: UEFI (OVMF) for both, and
# labimg's proxy mode beside a separate DHCP server. UEFI=0 / PROXY=0 skip them.
uefi=${UEFI:-1}
proxy=${PROXY:-1}
# Boots per flow: each flow's time is the median, and its timeline and logs are those
# of the median boot (one TCG boot varies by a few seconds with the host's load).
boots=${BOOTS:-3}
work=$(mktemp -d /tmp/labimg-pxe-bench.XXXXXX)
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Foreground only: a function run with `&` is a subshell whose pid is not the
# program's. Background programs use `ip netns exec` directly, which execs them.
in_ns() { ip netns exec "$ns" "$@"; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { printf "%.3f" "$(echo "$1 / $2" | bc -l)"; }

# --- the image: the proxmox profile plus this benchmark's node -----------------
echo "# building (or reusing) the proxmox image with node $host ($mac)"
cargo build --release -q -p labimg
labimg=$repo/target/release/labimg
profile_text="extends = \"$repo/profiles/proxmox.toml\"

[[nodes]]
hostname = \"$host\"
mac = \"$mac\"
role = \"server\"
dhcp-reservation = true

# A netbooted server keeps STATE on its local disk (each boot gets a blank one).
[netboot]
state-disk = \"vda\"

[outputs]
formats = [\"qcow2\"]
"
key=$( { printf '%s' "$profile_text"; cat "$labimg" qemu-tests/stand-in/k3s; } | sha256sum | cut -c1-16)
build=$repo/target/bench/proxmox-pxe-$key
if [ ! -f "$build/manifest.json" ]; then
    mkdir -p "$repo/target/bench"
    printf '%s' "$profile_text" > "$work/profile.toml"
    rm -rf "$build"
    t0=$(now)
    timeout 3600 cargo run --release -q -- build --profile "$work/profile.toml" \
        --k3s-binary qemu-tests/stand-in/k3s --out "$build.tmp" >/dev/null 2>"$work/build.log" \
        || { tail -20 "$work/build.log" >&2; exit 1; }
    mv "$build.tmp" "$build"
    printf '  built in %.0f s: %s\n' "$(echo "$(now) - $t0" | bc)" "$build"
else
    echo "  reusing $build"
fi

# --- the served folders --------------------------------------------------------
# Copies, not symlinks: the servers refuse paths that resolve outside their roots.
images=$work/images
mkdir -p "$images/proxmox"
cp -a "$build/netboot" "$build/nodes" "$images/proxmox/"
printf '[default]\naction = "ignore"\n\n[[node]]\nhostname = "%s"\nmac = "%s"\nrole = "server"\nprofile = "proxmox"\n' \
    "$host" "$mac" > "$work/inventory.toml"
# iPXE binaries (Debian's, as the tests use them); `snponly.efi`, which no BIOS flow
# asks for, is replaced by the 50 MiB TFTP payload: labimg's TFTP serves only iPXE
# binaries and Pi files.
ipxe_src=$repo/target/qemu-tests/ipxe
[ -f "$ipxe_src/undionly.kpxe" ] || {
    echo "no iPXE binaries in $ipxe_src: run the netboot_pxe tests once (cargo nextest run -p labimg-qemu-tests --test netboot_pxe) to fetch them" >&2
    exit 1
}
mkdir -p "$work/ipxe" "$work/tftp"
cp "$ipxe_src"/* "$work/ipxe/"
head -c $((50 * 1024 * 1024)) /dev/urandom > "$work/ipxe/snponly.efi"
cp "$work/ipxe/snponly.efi" "$work/tftp/payload.bin"
cp "$images/proxmox/netboot/vmlinuz" "$images/proxmox/netboot/initrd.img" "$work/tftp/"

# --- the namespace: a bridge with the server address and one tap ------------------
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$ns" addr add "$srv/24" dev br0
ip -n "$ns" link set br0 up
ip -n "$ns" tuntap add dev tap0 mode tap
ip -n "$ns" link set tap0 master br0
ip -n "$ns" link set tap0 up

labimg_pid=
start_labimg() { # <dhcp mode> <tftp port> [more serve flags]
    local mode=$1 tftp=$2
    shift 2
    ip netns exec "$ns" "$labimg" serve --images "$images" --inventory "$work/inventory.toml" \
        --interface br0 --dhcp "$mode" --http-addr "$srv:$http_port" --tftp-addr "$srv:$tftp" \
        --pool-start 10.77.9.100 --pool-end 10.77.9.150 \
        --state-dir "$work/state" --ipxe-dir "$work/ipxe" "$@" </dev/null >>"$work/labimg.log" 2>&1 &
    labimg_pid=$!
    pids+=("$labimg_pid")
    local i
    for i in $(seq 100); do
        in_ns curl -sf --max-time 2 "http://$srv:$http_port/healthz" >/dev/null && return 0
        kill -0 "$labimg_pid" 2>/dev/null || break
        sleep 0.2
    done
    echo "labimg serve did not come up:" >&2; tail -20 "$work/labimg.log" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Boots the VM from whatever serves the namespace, firmware $2 (bios: SeaBIOS and
# QEMU's iPXE ROM; uefi: OVMF and QEMU's iPXE EFI ROM). The serial console goes
# through `stamp`, which prefixes each line with its seconds since QEMU's start, and
# boot_s is the time to the stand-in's last line. (Not run in $(…), so QEMU's pid
# reaches the cleanup list.)
# Integer microseconds and no subprocess per line: a `bc` per line cost the boot CPU
# time and, in the kernel's bursts of lines, stamped them late.
stamp() { # <t0>
    local line t0=${1/./} t
    while IFS= read -r line; do
        t=$(( ${EPOCHREALTIME/./} - t0 ))
        printf '%d.%03d %s\n' $(( t / 1000000 )) $(( t % 1000000 / 1000 )) "${line//$'\r'/}"
    done
}
# Bytes the servers sent: labimg's HTTP and TFTP counters, plus what dnsmasq logged
# as sent over TFTP (the reference flows). A flow's bytes are the difference across
# its boot: what one node pulls (iPXE, boot script, kernel, initrd, root image, config).
served_bytes() {
    local b=0 f
    b=$(in_ns curl -sf --max-time 5 "http://$srv:$http_port/metrics" \
        | awk '/^labimg_(http|tftp)_bytes_total/ {s += $2} END {printf "%d", s + 0}') || b=0
    if [ -f "$work/dnsmasq.log" ]; then
        while read -r f; do
            b=$((b + $(stat -c %s "$f")))
        done < <(sed -n 's/.* sent \(\/[^ ]*\) to .*/\1/p' "$work/dnsmasq.log")
    fi
    echo "$b"
}
declare -A flow_bytes

pxe_boot() { # <name> <bios|uefi>
    local serial=$work/$1.serial t0 pid keep fw=() bytes0
    bytes0=$(served_bytes)
    : > "$serial"
    if [ "$2" = uefi ]; then
        cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/$1.vars"
        fw=(-machine q35 -drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
            -drive "if=pflash,format=raw,file=$work/$1.vars")
    else
        fw=(-machine pc)
    fi
    qemu-img create -q -f qcow2 "$work/$1.disk" 2G
    t0=$EPOCHREALTIME
    echo "$t0" > "$work/$1.t0"
    ip netns exec "$ns" timeout "$boot_timeout" qemu-system-x86_64 "${fw[@]}" -accel tcg -m 2048 -smp 2 \
        -display none -no-reboot -monitor none -serial stdio \
        -drive "file=$work/$1.disk,if=virtio,format=qcow2" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
        -device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=1" -boot n \
        </dev/null > >(stamp "$t0" > "$serial") 2>"$work/$1.qemu.log" &
    pid=$!
    pids+=("$pid")
    while ! grep -q 'k3s-stand-in: done' "$serial"; do
        if grep -q 'labimg: FATAL' "$serial"; then
            keep=/tmp/labimg-pxe-bench-$1.serial
            cp "$serial" "$keep"
            echo "$1: the node stopped with a FATAL; serial log kept in $keep" >&2
            grep 'labimg: FATAL' "$serial" | head -3 >&2
            exit 1
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            sleep 0.5
            grep -q 'k3s-stand-in: done' "$serial" && break
            keep=/tmp/labimg-pxe-bench-$1.serial
            cp "$serial" "$keep"
            echo "$1: QEMU ended without reaching the stand-in; serial log kept in $keep" >&2
            tail -20 "$serial" >&2
            exit 1
        fi
        sleep 0.2
    done
    boot_s=$(grep -m1 'k3s-stand-in: done' "$serial" | cut -d' ' -f1)
    # The stand-in powers off; give QEMU a moment, then make sure it is gone.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    stop "$pid"
    if grep -q 'labimg: FATAL' "$serial" || ! grep -q "labimg: identity hostname=$host role=server source=url" "$serial"; then
        keep=/tmp/labimg-pxe-bench-$1.serial
        cp "$serial" "$keep"
        echo "$1: the node did not boot with the server's identity; serial log kept in $keep" >&2
        exit 1
    fi
    # The server's view of the same boot (events are posted in the background).
    local i
    for i in $(seq 20); do
        in_ns curl -sf --max-time 5 "http://$srv:$http_port/v1/nodes" > "$work/$1.nodes.json" || true
        jq -e --arg h "$host" '.nodes[] | select(.node.hostname == $h) | .boot.marks[] | select(.milestone == "k3s-started")' \
            "$work/$1.nodes.json" >/dev/null 2>&1 && break
        sleep 0.5
    done
    [[ " ${flows[*]} " == *" $1 "* ]] || flows+=("$1")
    flow_bytes[$1]=$(( $(served_bytes) - bytes0 ))
}

# pxe_boots <name> <bios|uefi>: $boots boots of one flow. boot_s is the median and
# boot_runs every time; the flow's serial log, server view and start time are the
# median boot's.
pxe_boots() {
    local r times=() median_s
    for r in $(seq "$boots"); do
        pxe_boot "$1" "$2"
        times+=("$boot_s")
        for f in serial nodes.json t0; do cp "$work/$1.$f" "$work/$1.run$r.$f"; done
    done
    median_s=$(printf '%s\n' "${times[@]}" | median)
    for r in $(seq "$boots"); do
        if [ "${times[$((r - 1))]}" = "$median_s" ] || [ "$r" = "$boots" ]; then
            for f in serial nodes.json t0; do cp "$work/$1.run$r.$f" "$work/$1.$f"; done
            break
        fi
    done
    mkdir -p "$repo/target/bench/logs"
    cp "$work/$1.serial" "$work/$1.nodes.json" "$repo/target/bench/logs/"
    boot_s=$median_s
    boot_runs="${times[*]}"
}

# The milestone table: rows are milestones, one column per flow, each cell
# "console/server" seconds since power-on (QEMU's start); "-" where that view does
# not see the milestone (the console prints nothing for the root image download; the
# server sees no DHCP it does not answer).
rows=(
    "DHCP done|Configuring \\(net|dhcp-offer"
    "boot script|boot\.ipxe|boot-script"
    "kernel|/vmlinuz|kernel"
    "initrd|/initrd\.img|initrd"
    "stage 1 start|labimg: stage1 start|booted"
    "root image|-|root-image"
    "root verified|labimg: root verified|root-verified"
    "stage 2 start|labimg: stage2 start|-"
    "network (stage 2)|labimg: dhcp lease kept|network-up"
    "config fetched|labimg: identity|config-fetched"
    "k3s started|labimg: k3s starting|k3s-started"
    "stand-in done|k3s-stand-in: done|-"
)
console_at() { # <flow> <regex>
    [ "$2" = - ] && { echo -; return; }
    local t
    t=$(grep -m1 -E -- "$2" "$work/$1.serial" | cut -d' ' -f1)
    echo "${t:--}"
}
server_at() { # <flow> <milestone>
    [ "$2" = - ] && { echo -; return; }
    local t0
    t0=$(cat "$work/$1.t0")
    jq -r --arg h "$host" --arg m "$2" --argjson t0 "$t0" '
        [.nodes[] | select(.node.hostname == $h) | .boot | select(. != null)
         | .started as $s | .marks[] | select(.milestone == $m) | ($s + .seconds - $t0)]
        | if length == 0 then "-" else (.[0] * 10 | round / 10 | tostring) end' "$work/$1.nodes.json" 2>/dev/null || echo -
}
timeline_table() {
    local row name re ms f line
    printf '%-20s' "milestone (s)"
    for f in "${flows[@]}"; do printf ' %18s' "$f"; done
    printf '\n'
    for row in "${rows[@]}"; do
        IFS='|' read -r name re ms <<<"$row"
        line=$(printf '%-20s' "$name")
        for f in "${flows[@]}"; do
            line+=$(printf ' %18s' "$(console_at "$f" "$re" | sed 's/\(\.[0-9]\)[0-9]*$/\1/')/$(server_at "$f" "$ms")")
        done
        echo "$line"
    done
}
flows=()

tftp_mbps() { # <url>: 3 fetches, median MB/s
    local i t0 t
    for i in 1 2 3; do
        t0=$(now)
        in_ns timeout 300 curl -sf -o /dev/null --tftp-blksize 1468 "$1"
        t=$(echo "$(now) - $t0" | bc)
        echo "scale=3; 50 * 1.048576 / $t" | bc -l
    done | median
}
http_mbps() { # <url> <bytes>: 5 fetches, median MB/s
    local i t0 t
    for i in 1 2 3 4 5; do
        t0=$(now)
        in_ns timeout 120 curl -sf -o /dev/null "$1"
        t=$(echo "$(now) - $t0" | bc)
        echo "scale=3; $2 / 1000000 / $t" | bc -l
    done | median
}
root_bytes=$(stat -c %s "$images/proxmox/netboot/root.squashfs")
root_path=/images/proxmox/root.squashfs

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"

# --- labimg: full DHCP, TFTP and HTTP ---------------------------------------------
start_labimg full 69
echo "# (a) PXE boots with labimg serve --dhcp full (iPXE ROM -> HTTP boot.ipxe, kernel, initrd)"
pxe_boots labimg-full-bios bios; boot_labimg=$boot_s
printf '  BIOS %.1f s (median of %s: %s)\n' "$boot_labimg" "$boots" "$boot_runs"
if [ "$uefi" = 1 ]; then
    pxe_boots labimg-full-uefi uefi; boot_labimg_uefi=$boot_s
    printf '  UEFI %.1f s (median of %s: %s)\n' "$boot_labimg_uefi" "$boots" "$boot_runs"
fi
echo "# (b) TFTP, labimg, 50 MiB, blksize 1468"
tftp_labimg=$(tftp_mbps "tftp://$srv/snponly.efi")
echo "  $tftp_labimg MB/s (median of 3)"
echo "# (c) HTTP, labimg, $root_path ($root_bytes bytes)"
http_labimg=$(http_mbps "http://$srv:$http_port$root_path" "$root_bytes")
echo "  $http_labimg MB/s (median of 5)"
# The boot script labimg renders for the node (same token: same state folder below).
in_ns curl -sf --max-time 10 "http://$srv:$http_port/boot.ipxe?mac=$mac" > "$work/boot.http.ipxe"
stop "$labimg_pid"

# --- labimg in proxy mode beside a home router's DHCP (dnsmasq, addresses only) ----
# The default deployment: the router leases addresses, labimg answers PXE clients.
# Its router advertisement is opt-in here (the router usually sends its own), so the
# first boot shows iPXE's IPv6 wait, the second the flag that removes it.
router_dhcp() {
    ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root \
        --interface=br0 --bind-interfaces --pid-file= --log-facility=- \
        --dhcp-range=10.77.9.160,10.77.9.200,255.255.255.0,1h --dhcp-leasefile="$work/router.leases" \
        </dev/null >"$work/router.log" 2>&1 &
    router_pid=$!
    pids+=("$router_pid")
}
if [ "$proxy" = 1 ]; then
    router_dhcp
    start_labimg proxy 69
    echo "# (a) PXE boot with labimg serve --dhcp proxy beside the router's DHCP"
    pxe_boots labimg-proxy-bios bios; boot_proxy=$boot_s
    printf '  BIOS %.1f s (median of %s: %s)\n' "$boot_proxy" "$boots" "$boot_runs"
    stop "$labimg_pid"
    start_labimg proxy 69 --router-advert on
    echo "# (a) the same with --router-advert on"
    pxe_boots labimg-proxy-ra-bios bios; boot_proxy_ra=$boot_s
    printf '  BIOS %.1f s (median of %s: %s)\n' "$boot_proxy_ra" "$boots" "$boot_runs"
    stop "$labimg_pid"
    stop "$router_pid"
fi

# --- reference: dnsmasq (DHCP + TFTP), nginx; labimg for root/config/events only ----
start_labimg off 0
# Kernel and initrd over TFTP; the rest of the script (command line with root URL,
# config URL and token) is labimg's, unchanged.
sed -e "s#^kernel http://[^ ]*/images/proxmox/#kernel tftp://$srv/#" \
    -e "s#^initrd http://[^ ]*/images/proxmox/#initrd tftp://$srv/#" \
    "$work/boot.http.ipxe" > "$work/tftp/boot.ipxe"
if ! grep -q "^kernel tftp://" "$work/tftp/boot.ipxe" || ! grep -q "^initrd tftp://" "$work/tftp/boot.ipxe"; then
    echo "unexpected boot script from labimg:" >&2; cat "$work/boot.http.ipxe" >&2; exit 1
fi
ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root \
    --interface=br0 --bind-interfaces --pid-file= --log-facility=- \
    --dhcp-range=10.77.9.100,10.77.9.150,255.255.255.0,1h --dhcp-leasefile="$work/dnsmasq.leases" \
    --dhcp-match=set:ipxe,175 --dhcp-boot=tag:!ipxe,undionly.kpxe --dhcp-boot=tag:ipxe,boot.ipxe \
    --enable-tftp --tftp-root="$work/tftp" </dev/null >"$work/dnsmasq.log" 2>&1 &
dnsmasq_pid=$!
pids+=("$dnsmasq_pid")
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
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
        location /images/proxmox/ { alias $images/proxmox/netboot/; }
    }
}
EOF
ip netns exec "$ns" nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" </dev/null >"$work/nginx/out.log" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
for i in $(seq 50); do
    in_ns curl -sf --max-time 2 -o /dev/null "tftp://$srv/boot.ipxe" \
        && in_ns curl -sf --max-time 2 -o /dev/null -r 0-0 "http://$srv:$nginx_port$root_path" && break
    [ "$i" = 50 ] && { echo "dnsmasq or nginx did not come up:" >&2; cat "$work/dnsmasq.log" "$work/nginx/error.log" >&2; exit 1; }
    sleep 0.2
done
echo "# (a) PXE boots with dnsmasq (iPXE ROM -> TFTP boot.ipxe, kernel, initrd)"
pxe_boots dnsmasq-bios bios; boot_dnsmasq=$boot_s
printf '  BIOS %.1f s (median of %s: %s)\n' "$boot_dnsmasq" "$boots" "$boot_runs"
if [ "$uefi" = 1 ]; then
    pxe_boots dnsmasq-uefi uefi; boot_dnsmasq_uefi=$boot_s
    printf '  UEFI %.1f s (median of %s: %s)\n' "$boot_dnsmasq_uefi" "$boots" "$boot_runs"
fi
# The reference boot must really have taken the TFTP path.
for f in boot.ipxe vmlinuz initrd.img; do
    grep -q "sent $work/tftp/$f" "$work/dnsmasq.log" \
        || { echo "dnsmasq did not serve $f:" >&2; cat "$work/dnsmasq.log" >&2; exit 1; }
done
echo "# (b) TFTP, dnsmasq, 50 MiB, blksize 1468"
tftp_dnsmasq=$(tftp_mbps "tftp://$srv/payload.bin")
echo "  $tftp_dnsmasq MB/s (median of 3)"
echo "# (c) HTTP, nginx, $root_path"
http_nginx=$(http_mbps "http://$srv:$nginx_port$root_path" "$root_bytes")
echo "  $http_nginx MB/s (median of 5)"
wrk_line=
if command -v wrk >/dev/null; then
    wl=$(in_ns wrk -t1 -c4 -d10s "http://$srv:$http_port$root_path" | awk '/Requests\/sec/ {print $2}')
    wn=$(in_ns wrk -t1 -c4 -d10s "http://$srv:$nginx_port$root_path" | awk '/Requests\/sec/ {print $2}')
    wrk_line=$(printf 'wrk, 4 connections, 10 s, req/s:  labimg %s  nginx %s  ratio %s' "$wl" "$wn" "$(ratio "$wl" "$wn")")
fi

echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== summary (ratio labimg / reference; boot: lower is better, throughput: higher is better)"
printf '(a) PXE boot to the k3s stand-in, BIOS:  labimg %7.1f s   dnsmasq %7.1f s   ratio %s\n' \
    "$boot_labimg" "$boot_dnsmasq" "$(ratio "$boot_labimg" "$boot_dnsmasq")"
[ "$uefi" = 1 ] && printf '(a) PXE boot to the k3s stand-in, UEFI:  labimg %7.1f s   dnsmasq %7.1f s   ratio %s\n' \
    "$boot_labimg_uefi" "$boot_dnsmasq_uefi" "$(ratio "$boot_labimg_uefi" "$boot_dnsmasq_uefi")"
[ "$proxy" = 1 ] && printf '    proxy mode beside the router, BIOS:  %.1f s, with --router-advert on %.1f s\n' \
    "$boot_proxy" "$boot_proxy_ra"
printf '(b) TFTP 50 MiB, blksize 1468:     labimg %7.1f MB/s dnsmasq %7.1f MB/s ratio %s\n' \
    "$tftp_labimg" "$tftp_dnsmasq" "$(ratio "$tftp_labimg" "$tftp_dnsmasq")"
printf '(c) HTTP root image (%d MB):       labimg %7.1f MB/s nginx   %7.1f MB/s ratio %s\n' \
    "$((root_bytes / 1000000))" "$http_labimg" "$http_nginx" "$(ratio "$http_labimg" "$http_nginx")"
[ -z "$wrk_line" ] || echo "    $wrk_line"
echo
echo "== boot timeline: seconds from power-on (QEMU start), console/server view"
timeline_table
echo
echo "== bytes one node pulled, per flow (servers' counters across the boot)"
for f in "${flows[@]}"; do printf '%-22s %12d\n' "$f" "${flow_bytes[$f]}"; done
printf 'of which (file sizes): kernel %d, initrd %d, root image %d; the rest is iPXE (BIOS:\n' \
    "$(stat -c %s "$images/proxmox/netboot/vmlinuz")" "$(stat -c %s "$images/proxmox/netboot/initrd.img")" "$root_bytes"
echo "undionly.kpxe from labimg's or dnsmasq's TFTP), the boot script and the config bundle."
