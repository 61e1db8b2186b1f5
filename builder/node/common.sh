# labimg node OS: functions shared by stage 1 (/init in the initramfs, installed as
# /lib/labimg/common.sh) and stage 2 (/usr/lib/labimg/init in the root image,
# installed as /usr/lib/labimg/common.sh). POSIX sh for busybox ash: no bashisms.
#
# Sourced, never executed. Everything here must work on x86_64 and aarch64.

# Where console lines go. PID 1 always has /dev/console; fall back to stderr so that
# the functions stay usable from a test shell. /dev/console is the last console= on
# the command line (a serial port); with console=tty0 before it (Proxmox images) the
# lines also go to the display, where noVNC shows them.
labimg_say() {
	if [ -c /dev/console ] && [ -w /dev/console ]; then
		printf '%s\n' "$*" >/dev/console 2>/dev/null || printf '%s\n' "$*" >&2
	else
		printf '%s\n' "$*" >&2
	fi
	if [ -z "$LABIMG_TTY0" ] && [ -r /proc/cmdline ]; then
		case " $(cat /proc/cmdline) " in
		*" console=tty0 "*) LABIMG_TTY0=yes ;;
		*) LABIMG_TTY0=no ;;
		esac
	fi
	if [ "$LABIMG_TTY0" = yes ] && [ -c /dev/tty0 ]; then
		printf '%s\n' "$*" >/dev/tty0 2>/dev/null
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
	case "$(cmdline_get labimg.on-fatal)" in
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

# The kernel command line, read once. LABIMG_CMDLINE may be preset (tests).
cmdline_load() {
	if [ -z "${LABIMG_CMDLINE+set}" ]; then
		LABIMG_CMDLINE=$(cat /proc/cmdline 2>/dev/null)
	fi
}

# cmdline_get KEY: print the value of the last KEY=value on the command line
# (nothing when absent; a bare KEY prints 1). Values cannot contain spaces.
cmdline_get() {
	cmdline_load
	labimg_val=
	for labimg_w in $LABIMG_CMDLINE; do
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

# wait_block_dev SPEC SECONDS: like find_block_dev, polling until it appears.
wait_block_dev() {
	labimg_tries=$(($2 * 10))
	while [ "$labimg_tries" -gt 0 ]; do
		find_block_dev "$1" && return 0
		sleep 0.1
		labimg_tries=$((labimg_tries - 1))
	done
	return 1
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

# wait_ether SECONDS: first_ether, polling while the NIC driver probes.
wait_ether() {
	labimg_tries=$(($1 * 10))
	while [ "$labimg_tries" -gt 0 ]; do
		first_ether && return 0
		sleep 0.1
		labimg_tries=$((labimg_tries - 1))
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
	udhcpc -i "$1" -s "$2" -n -q -t 10 -T 2 >/dev/null 2>&1 || return 1
	[ -n "$(if_addr "$1")" ]
}
