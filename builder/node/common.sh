# labimg node OS: functions shared by stage 1 (/init in the initramfs, installed as
# /lib/labimg/common.sh), stage 2 (/usr/lib/labimg/init in the root image, installed as
# /usr/lib/labimg/common.sh) and the upgrade agent. POSIX sh for busybox ash: no bashisms.
#
# Sourced, never executed. Everything here must work on x86_64 and aarch64. The pure
# functions are tested on the host under busybox sh (builder/tests/node_common.rs).
#
# Names (sh has one namespace and no `local`):
#   LB_NAME      state shared between functions or scripts: set in one place, read in
#                others (LB_CMDLINE, boot.env's LB_ROOT_*, node.env as node_env_load
#                reads it, stage 2's LB_HOSTNAME, the upgrade agent's LB_NEW_*).
#   NAME         a constant set at the top of a script and never changed (paths).
#   lowercase    scratch inside one function; in this file they start with labimg_,
#                so that a helper never clobbers its caller's.
#   LABIMG_NAME  set by an operator in the environment (LABIMG_UPGRADE_TRIES, ...).
# node.env's own keys (HOSTNAME=, ROLE=, ...) belong to the builder (nodecfg.rs) and
# are read in one place, node_env_load.

# Where console lines go. PID 1 always has /dev/console; fall back to stderr so that
# the functions stay usable from a test shell. /dev/console is the last console= on
# the command line (a serial port); with console=tty0 before it (Proxmox images) the
# lines also go to the display, where noVNC shows them.
# Lines said before stage 2 starts syslogd wait in EARLY_LOG (/run survives the
# switch_root) until start_logging replays them into the persisted log.
EARLY_LOG=/run/labimg/early.log
labimg_say() {
	if [ -c /dev/console ] && [ -w /dev/console ]; then
		printf '%s\n' "$*" >/dev/console 2>/dev/null || printf '%s\n' "$*" >&2
	else
		printf '%s\n' "$*" >&2
	fi
	if [ -z "$LB_TTY0" ] && [ -r /proc/cmdline ]; then
		case " $(cat /proc/cmdline) " in
		*" console=tty0 "*) LB_TTY0=yes ;;
		*) LB_TTY0=no ;;
		esac
	fi
	if [ "$LB_TTY0" = yes ] && [ -c /dev/tty0 ]; then
		printf '%s\n' "$*" >/dev/tty0 2>/dev/null
	fi
	# Into the persisted log too, once stage 2 runs syslogd (its socket is there);
	# before that into EARLY_LOG.
	if [ -S /dev/log ]; then
		labimg_said=$*
		logger -t labimg -- "${labimg_said#labimg: }" 2>/dev/null
	elif [ -d "${EARLY_LOG%/*}" ]; then
		printf '%s\n' "$*" >>"$EARLY_LOG" 2>/dev/null
	fi
}

# milestone NAME [key=value ...]: one greppable line, `labimg: NAME key=value ...`.
milestone() {
	labimg_say "labimg: $*"
}

# warn MESSAGE: a non-fatal problem, greppable as `labimg: WARNING:`.
warn() {
	labimg_say "labimg: WARNING: $*"
}

# fatal MESSAGE: report and stop for good without ever returning. PID 1 must not exit
# (that panics the kernel), so unless labimg.on-fatal asks for poweroff/reboot the
# message is repeated every 60 s for whoever looks at the console later.
fatal() {
	labimg_fatal_msg="labimg: FATAL: $*"
	labimg_say "$labimg_fatal_msg"
	# Also into the kernel log (dmesg, pstore, netconsole); on a console at the
	# default loglevel this shows the line a second time, which is harmless.
	printf '<3>%s\n' "$labimg_fatal_msg" >/dev/kmsg 2>/dev/null
	sync
	case "$(on_fatal)" in
	poweroff)
		sleep 1
		poweroff -f
		;;
	reboot)
		sleep 1
		reboot -f
		;;
	esac
	while :; do
		sleep 60
		labimg_say "$labimg_fatal_msg"
	done
}

# on_fatal: what a FATAL does: labimg.on-fatal (poweroff, reboot), else reboot on a
# trial boot of a counted entry (systemd-boot's LoaderBootCountPath is set: a Secure
# Boot UKI cannot carry labimg.on-fatal=reboot, its command line is sealed), else wait.
on_fatal() {
	labimg_on_fatal=$(cmdline_get labimg.on-fatal)
	[ -n "$labimg_on_fatal" ] || [ -z "$(boot_count_path)" ] || labimg_on_fatal=reboot
	printf '%s' "$labimg_on_fatal"
}

# The kernel command line, read once into LB_CMDLINE. LB_CMDLINE may be preset (tests).
cmdline_load() {
	if [ -z "${LB_CMDLINE+set}" ]; then
		LB_CMDLINE=$(cat /proc/cmdline 2>/dev/null)
	fi
}

# cmdline_add KEY=VALUE: as if KEY=VALUE came last on the command line (for this shell;
# /proc/cmdline stays as it is).
cmdline_add() {
	cmdline_load
	LB_CMDLINE="$LB_CMDLINE $1"
}

# cmdline_get KEY: print the value of the last KEY=value on the command line
# (nothing when absent; a bare KEY prints 1). Values cannot contain spaces.
cmdline_get() {
	cmdline_load
	labimg_val=
	for labimg_w in $LB_CMDLINE; do
		case "$labimg_w" in
		"$1"=*) labimg_val=${labimg_w#"$1"=} ;;
		"$1") labimg_val=1 ;;
		esac
	done
	printf '%s' "$labimg_val"
}

# lower STRING: lowercase it.
lower() {
	printf '%s' "$1" | tr '[:upper:]' '[:lower:]'
}

# sha256_of FILE [SIZE]: hex sha256 of FILE, or of its first SIZE bytes. dd with 1 MiB
# blocks, not head -c: head reads a block device in small chunks, several times slower.
sha256_of() {
	if [ -n "${2:-}" ]; then
		dd if="$1" bs=1M iflag=count_bytes count="$2" 2>/dev/null | sha256sum | cut -d' ' -f1
	else
		sha256sum <"$1" | cut -d' ' -f1
	fi
}

# uptime_cs: centiseconds since boot (for durations; busybox date has whole seconds).
uptime_cs() {
	labimg_up=$(cut -d' ' -f1 /proc/uptime)
	echo $((${labimg_up%.*} * 100 + 1${labimg_up#*.} - 100))
}

# uptime_mark STAGE: remember when (uptime, seconds) a boot event's milestone happened,
# in /run (which stage 2 inherits), so stage 2's `event STAGE` can tell labimg serve
# how long ago it was.
uptime_mark() {
	cut -d' ' -f1 /proc/uptime >"/run/labimg/up.$1" 2>/dev/null || true
}

# uevent_get SYSDIR KEY: value of KEY= in SYSDIR/uevent.
uevent_get() {
	sed -n "s/^$2=//p" "$1/uevent" 2>/dev/null
}

# hexbytes DEV OFFSET COUNT: COUNT bytes of DEV at OFFSET, as lowercase hex pairs
# separated by spaces, in file order.
hexbytes() {
	dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -A n -t x1 -v | tr -s ' \n' '  ' | sed 's/^ //; s/ $//'
}

# le_number "b0 b1 ...": little-endian bytes to a decimal number (up to 8 bytes).
le_number() {
	labimg_n=0
	labimg_mul=1
	for labimg_b in $1; do
		labimg_n=$((labimg_n + 0x$labimg_b * labimg_mul))
		labimg_mul=$((labimg_mul * 256))
	done
	echo "$labimg_n"
}

# --- EFI variables (Secure Boot images; README.md "Upgrades") ---
# efivarfs, where the firmware's and systemd-boot's variables are (tests preset it).
: "${LB_EFIVARS:=/sys/firmware/efi/efivars}"
EFI_GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
EFI_LOADER=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f

# efivars_mount: make LB_EFIVARS readable (efivarfs, read-only) on an EFI machine if
# nothing is mounted there yet. Status 1 when there are no EFI variables.
efivars_mount() {
	[ -d /sys/firmware/efi ] || [ "$LB_EFIVARS" != /sys/firmware/efi/efivars ] || return 1
	if [ "$LB_EFIVARS" = /sys/firmware/efi/efivars ] && ! mountpoint -q "$LB_EFIVARS"; then
		modprobe efivarfs 2>/dev/null
		mount -t efivarfs -o ro,nosuid,nodev,noexec efivarfs "$LB_EFIVARS" 2>/dev/null || return 1
	fi
	[ -d "$LB_EFIVARS" ]
}

# efi_byte NAME-GUID: the first value byte of an EFI variable (after its 4 attribute
# bytes) as a decimal number; nothing when it is absent.
efi_byte() {
	[ -r "$LB_EFIVARS/$1" ] || return 0
	labimg_b=$(hexbytes "$LB_EFIVARS/$1" 4 1)
	[ -n "$labimg_b" ] && echo $((0x$labimg_b))
}

# secure_boot_state: on, off or setup (the firmware's SecureBoot and SetupMode
# variables), unknown without EFI variables.
secure_boot_state() {
	efivars_mount || {
		echo unknown
		return 0
	}
	if [ "$(efi_byte "SecureBoot-$EFI_GLOBAL")" = 1 ]; then
		echo on
	elif [ "$(efi_byte "SetupMode-$EFI_GLOBAL")" = 1 ]; then
		echo setup
	else
		echo off
	fi
}

# boot_count_path: systemd-boot's LoaderBootCountPath, the ESP path of the counted
# entry it booted (`\EFI\Linux\labimg-b+2-1.efi`): set only while an entry still has
# tries, i.e. on the trial boot of a freshly staged slot. UTF-16LE, ASCII here.
boot_count_path() {
	efivars_mount || return 0
	[ -r "$LB_EFIVARS/LoaderBootCountPath-$EFI_LOADER" ] || return 0
	dd if="$LB_EFIVARS/LoaderBootCountPath-$EFI_LOADER" bs=4 skip=1 2>/dev/null | tr -d '\000'
}
# --- end EFI variables ---
# partuuid_of SYSDIR: the PARTUUID of a partition (GPT unique GUID, or the MBR form
# `xxxxxxxx-NN`), read from the partition table of its disk; the kernel does not
# export it in sysfs and busybox has no blkid.
partuuid_of() {
	labimg_nr=$(cat "$1/partition" 2>/dev/null) || return 1
	labimg_disk=$(basename "$(dirname "$(readlink -f "$1")")")
	labimg_ddev=/dev/$labimg_disk
	labimg_ss=$(cat "/sys/class/block/$labimg_disk/queue/logical_block_size" 2>/dev/null || echo 512)
	if [ "$(dd if="$labimg_ddev" bs=1 skip="$labimg_ss" count=8 2>/dev/null)" = "EFI PART" ]; then
		labimg_lba=$(le_number "$(hexbytes "$labimg_ddev" $((labimg_ss + 72)) 8)")
		labimg_esz=$(le_number "$(hexbytes "$labimg_ddev" $((labimg_ss + 84)) 4)")
		labimg_off=$((labimg_lba * labimg_ss + (labimg_nr - 1) * labimg_esz + 16))
		# shellcheck disable=SC2046
		set -- $(hexbytes "$labimg_ddev" "$labimg_off" 16)
		[ $# -eq 16 ] || return 1
		printf '%s%s%s%s-%s%s-%s%s-%s%s-%s%s%s%s%s%s\n' "$4" "$3" "$2" "$1" "$6" "$5" "$8" "$7" \
			"$9" "${10}" "${11}" "${12}" "${13}" "${14}" "${15}" "${16}"
	else
		# shellcheck disable=SC2046
		set -- $(hexbytes "$labimg_ddev" 440 4)
		[ $# -eq 4 ] || return 1
		printf '%s%s%s%s-%02x\n' "$4" "$3" "$2" "$1" "$labimg_nr"
	fi
}

# find_block_dev SPEC: print the /dev path for PARTLABEL=x, PARTUUID=x or /dev/x,
# or fail if it does not exist (yet).
find_block_dev() {
	case "$1" in
	/dev/*)
		[ -b "$1" ] && echo "$1"
		return
		;;
	esac
	for labimg_sys in /sys/class/block/*; do
		[ -e "$labimg_sys/partition" ] || continue
		case "$1" in
		PARTLABEL=*)
			[ "$(uevent_get "$labimg_sys" PARTNAME)" = "${1#PARTLABEL=}" ] || continue
			;;
		PARTUUID=*)
			[ "$(partuuid_of "$labimg_sys")" = "$(lower "${1#PARTUUID=}")" ] || continue
			;;
		*) return 1 ;;
		esac
		labimg_dn=$(uevent_get "$labimg_sys" DEVNAME)
		[ -b "/dev/$labimg_dn" ] && echo "/dev/$labimg_dn" && return 0
	done
	return 1
}

# poll SECONDS CMD [ARG...]: run CMD every 0.1 s until it succeeds (its output passes
# through), for at most SECONDS; fails when it never did. For what appears while
# drivers probe (`poll 10 find_block_dev PARTLABEL=root-a`, `poll 10 first_ether`) and
# for processes to exit.
poll() {
	labimg_poll=$(($1 * 10))
	shift
	while [ "$labimg_poll" -gt 0 ]; do
		"$@" && return 0
		sleep 0.1
		labimg_poll=$((labimg_poll - 1))
	done
	return 1
}

# part_mount SPEC DIR [FSTYPE [OPTIONS]]: mount the partition SPEC (as find_block_dev
# takes it) on DIR, unless DIR is a mount point already; FSTYPE vfat and OPTIONS
# rw,noatime unless given (the ESP and the Pi's FAT partitions). Fails when SPEC is
# not there or mount fails.
part_mount() {
	mountpoint -q "$2" && return 0
	labimg_pm_dev=$(find_block_dev "$1") || return 1
	mkdir -p "$2"
	mount -t "${3:-vfat}" -o "${4:-rw,noatime}" "$labimg_pm_dev" "$2" 2>/dev/null
}

# part_umount DIR: sync and unmount DIR if something is mounted there.
part_umount() {
	mountpoint -q "$1" || return 0
	sync
	umount "$1"
}

# first_ether: name of the first ethernet interface (sorted by name, lo and virtual
# devices skipped), or fail.
first_ether() {
	for labimg_if in /sys/class/net/*; do
		[ "$(cat "$labimg_if/type" 2>/dev/null)" = 1 ] || continue
		[ -e "$labimg_if/device" ] || continue
		basename "$labimg_if"
		return 0
	done
	return 1
}

# if_addr IF: the first IPv4 address of IF in CIDR form.
if_addr() {
	ip -o -4 addr show dev "$1" 2>/dev/null | sed -n 's/.* inet \([0-9./]*\).*/\1/p' | head -n 1
}

# net_dhcp IF SCRIPT: bring IF up and get a lease with udhcpc; SCRIPT sets the
# address, default route and /etc/resolv.conf. Fails when no lease came.
net_dhcp() {
	ip link set lo up 2>/dev/null
	ip link set "$1" up || return 1
	udhcpc -i "$1" -s "$2" -O ntpsrv -n -q -t 10 -T 2 >/dev/null 2>&1 || return 1
	[ -n "$(if_addr "$1")" ]
}

# pi_serial FILE: a Raspberry Pi serial number as the devicetree gives it
# (/sys/firmware/devicetree/base/serial-number): NULs stripped, lowercase.
pi_serial() {
	lower "$(tr -d '\000' <"$1")"
}

# lookup_node NODES KEY...: the node directory name (a folder of NODES) for the first
# non-empty KEY (lowercase MAC or Pi serial) listed in NODES/index: lines
# `<mac-or-serial> <name>`, `#` comments, keys compared lowercased.
lookup_node() {
	labimg_nodes=$1
	shift
	[ -f "$labimg_nodes/index" ] || return 1
	for labimg_key in "$@"; do
		[ -n "$labimg_key" ] || continue
		labimg_name=$(awk -v k="$labimg_key" '$1 !~ /^#/ && tolower($1) == k { print $2; exit }' "$labimg_nodes/index")
		[ -n "$labimg_name" ] && [ -d "$labimg_nodes/$labimg_name" ] && echo "$labimg_name" && return 0
	done
	return 1
}

# derived_hostname PREFIX SERIAL MAC: the name of a machine the node table does not
# list: PREFIX-<last 8 hex digits of the Pi serial>, else PREFIX-<last 6 of the MAC>.
derived_hostname() {
	if [ -n "$2" ]; then
		labimg_id=$(printf '%s' "$2" | tail -c 8)
	elif [ -n "$3" ]; then
		labimg_id=$(printf '%s' "$3" | tr -d ':' | tail -c 6)
	else
		return 1
	fi
	echo "$1-$labimg_id"
}

# node_env_load FILE: source a node.env (the builder's KEY='value' lines, nodecfg.rs)
# into LB_HOSTNAME, LB_HOSTNAME_PREFIX, LB_ROLE, LB_IP, LB_GATEWAY, LB_DNS,
# LB_K3S_SHA256, LB_K3S_URL_SOURCE, LB_JOIN_PEERS (the first server of an etcd
# cluster: the other servers' https://host:6443, space-separated), LB_STATE_DISK
# (the netboot state disk's kernel name) and LB_NTP_SERVERS (time.servers); a key
# the file lacks is empty. The keys are the builder's and are read nowhere else; none
# of them is left set afterwards (the builder also writes K3S_VERSION=, for people).
# shellcheck disable=SC2034 # the LB_ names are read by stage 2
node_env_load() {
	HOSTNAME='' HOSTNAME_PREFIX='' ROLE='' IP='' GATEWAY='' DNS='' K3S_SHA256='' K3S_URL_SOURCE=''
	JOIN_PEERS='' STATE_DISK='' NTP_SERVERS=''
	# shellcheck disable=SC1090 # a node directory, from the image or labimg.config
	. "$1"
	LB_HOSTNAME=$HOSTNAME
	LB_HOSTNAME_PREFIX=$HOSTNAME_PREFIX
	LB_ROLE=$ROLE
	LB_IP=$IP
	LB_GATEWAY=$GATEWAY
	LB_DNS=$DNS
	LB_K3S_SHA256=$K3S_SHA256
	LB_K3S_URL_SOURCE=$K3S_URL_SOURCE
	LB_JOIN_PEERS=$JOIN_PEERS
	LB_STATE_DISK=$STATE_DISK
	LB_NTP_SERVERS=$NTP_SERVERS
	unset HOSTNAME HOSTNAME_PREFIX ROLE IP GATEWAY DNS K3S_SHA256 K3S_URL_SOURCE K3S_VERSION \
		JOIN_PEERS STATE_DISK NTP_SERVERS
}

# kv_get FILE KEY: the value of KEY in FILE, a file of `KEY='value'` lines as the
# builder writes them (upgrade.env, builder/src/upgrade.rs), read as data: nothing is
# sourced or evaluated. Besides empty and `#` lines every line must be a key of
# capitals, digits and _ (not starting with a digit), `=`, and a value in single quotes
# without a quote or backslash inside; any other line, or any key twice, fails the
# whole file (status 2, the line on stderr), so a damaged file is never half read.
# Status 1: the file is fine but has no KEY.
kv_get() {
	labimg_kv_found=
	labimg_kv_val=
	labimg_kv_seen=' '
	while IFS= read -r labimg_kv_line || [ -n "$labimg_kv_line" ]; do
		case "$labimg_kv_line" in
		'' | '#'*) continue ;;
		esac
		labimg_kv_k=${labimg_kv_line%%=*}
		labimg_kv_v=${labimg_kv_line#*=}
		case "$labimg_kv_k" in
		'' | [!A-Z_]* | *[!A-Z0-9_]*) labimg_kv_k= ;;
		esac
		case "$labimg_kv_v" in
		\'*\') labimg_kv_v=${labimg_kv_v#\'} labimg_kv_v=${labimg_kv_v%\'} ;;
		*) labimg_kv_k= ;;
		esac
		case "$labimg_kv_v" in
		*[\'\\]*) labimg_kv_k= ;;
		esac
		if [ -z "$labimg_kv_k" ] || [ "$labimg_kv_line" = "$labimg_kv_k" ]; then
			printf 'kv_get: %s: not a KEY='"'"'value'"'"' line: %s\n' "$1" "$labimg_kv_line" >&2
			return 2
		fi
		case "$labimg_kv_seen" in
		*" $labimg_kv_k "*)
			printf 'kv_get: %s: %s twice\n' "$1" "$labimg_kv_k" >&2
			return 2
			;;
		esac
		labimg_kv_seen="$labimg_kv_seen$labimg_kv_k "
		[ "$labimg_kv_k" = "$2" ] || continue
		labimg_kv_found=1
		labimg_kv_val=$labimg_kv_v
	done <"$1" || return 2
	[ -n "$labimg_kv_found" ] || return 1
	printf '%s\n' "$labimg_kv_val"
}

# sums_get SUMS FILE: the sha256 (lowercase) that SUMS, in sha256sum's format
# (`<sha256>  <path>`, or ` *<path>` in binary mode), lists for FILE; status 1 if none.
sums_get() {
	labimg_sum=$(awk -v f="$2" '$2 == f || $2 == "*" f { print $1; exit }' "$1") || return 1
	[ -n "$labimg_sum" ] || return 1
	lower "$labimg_sum"
}

# k3s_peer_answers URL: whether a k3s server answers at URL (https://host:6443): it
# serves its CA bundle at /cacerts without authentication. The certificate is not
# checked (the node has no CA to check it with before it joins; k3s checks the CA
# against the token when it joins). 5 seconds at most (busybox timeout rather than
# wget -T, which the 1.35 busybox the host tests use crashes on).
k3s_peer_answers() {
	timeout 5 wget -q --no-check-certificate -O /dev/null "$1/cacerts" 2>/dev/null
}

# k3s_join_decide CONFIG ETCD_DIR PROBE PEER...: whether the first server of an
# embedded-etcd cluster initialises it or joins it. CONFIG is the node's k3s
# config.yaml. Prints one word:
#   none      CONFIG has no `cluster-init: true` line: nothing to decide;
#   existing  ETCD_DIR exists: this node already has etcd data (it is a member);
#   join URL  no etcd data yet, and `PROBE PEER` succeeded for PEER (tried in order):
#             the cluster exists, so CONFIG is rewritten in place without its
#             cluster-init line and with `server: "PEER"` (a lost STATE rejoins
#             instead of starting a second cluster);
#   init      no etcd data and no peer answered: this node starts the cluster.
# CONFIG changes only with `join`; status 1 if it cannot be rewritten.
k3s_join_decide() {
	labimg_jd_cfg=$1 labimg_jd_etcd=$2 labimg_jd_probe=$3
	shift 3
	if ! grep -qx 'cluster-init: true' "$labimg_jd_cfg"; then
		echo none
		return 0
	fi
	if [ -d "$labimg_jd_etcd" ]; then
		echo existing
		return 0
	fi
	for labimg_jd_peer in "$@"; do
		"$labimg_jd_probe" "$labimg_jd_peer" || continue
		labimg_jd_tmp=$labimg_jd_cfg.join.$$
		if ! (
			umask 077
			{
				grep -vx -e 'cluster-init: true' -e 'server: .*' "$labimg_jd_cfg"
				printf 'server: "%s"\n' "$labimg_jd_peer"
			} >"$labimg_jd_tmp"
		) || ! mv -f "$labimg_jd_tmp" "$labimg_jd_cfg"; then
			rm -f "$labimg_jd_tmp"
			return 1
		fi
		echo "join $labimg_jd_peer"
		return 0
	done
	echo init
}
