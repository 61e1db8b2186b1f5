# labimg node OS: the optional SSH server, installed as /usr/lib/labimg/ssh.sh only in
# images whose profile has authorized keys (`[ssh] authorized-keys`, or a node's
# `ssh-authorized-keys`); those images also carry Debian's dropbear-bin. POSIX sh for
# busybox ash, sourced (never executed) by stage 2 once STATE is on /var and the
# network is up; uses common.sh's milestone and warn, and stage 2's LB_NODE_DIR,
# LB_HOSTNAME and LB_BG_PIDS.
#
# Key-only root logins: dropbear -s (no passwords; root's shadow entry has none
# anyway). Host keys are made by dropbearkey on the first boot and kept on STATE, so a
# node keeps its host key across reboots and upgrades; their fingerprints go to the
# console (`labimg: ssh ready …`) for the operator to check the first connection.
# The node's authorized keys (the builder's ssh/authorized_keys in the node directory)
# are copied to /run/labimg/ssh, which dropbear reads with -D: root's home stays on
# the read-only root, untouched.

SSH_STATE=/var/lib/labimg/ssh
SSH_RUN=/run/labimg/ssh
SSH_LOG=/run/labimg/dropbear.out
SSH_PORT=22
SSH_KEY_TYPES="ed25519 ecdsa"

# ssh_host_key TYPE: makes $SSH_STATE/dropbear_TYPE_host_key on the first boot (written
# aside, then renamed, so a power cut never leaves half a key), keeps it afterwards.
# An unreadable kept key is set aside (.bad) and replaced, with a warning: the node's
# identity changed. Prints `<type> <SHA256 fingerprint> created|kept`.
ssh_host_key() {
	ssh_key=$SSH_STATE/dropbear_$1_host_key
	ssh_how=kept
	if [ -s "$ssh_key" ] && ! dropbearkey -y -f "$ssh_key" >/dev/null 2>&1; then
		mv -f "$ssh_key" "$ssh_key.bad"
		warn "ssh host key $ssh_key unreadable, set aside as $ssh_key.bad: a new one is made (the node's SSH fingerprint changes)"
	fi
	if [ ! -s "$ssh_key" ]; then
		rm -f "$ssh_key.new" "$ssh_key.new.pub"
		dropbearkey -t "$1" -f "$ssh_key.new" >/dev/null 2>&1 || return 1
		rm -f "$ssh_key.new.pub"
		chmod 0600 "$ssh_key.new"
		sync
		mv -f "$ssh_key.new" "$ssh_key" || return 1
		ssh_how=created
	fi
	# `dropbearkey -y` prints "Public key portion is:", "<type> <base64> <comment>" and
	# "Fingerprint: SHA256:<base64>".
	dropbearkey -y -f "$ssh_key" 2>/dev/null | awk -v how="$ssh_how" '
		/^Fingerprint:/ { fp = $2 }
		/^(ssh-|ecdsa-)/ { type = $1 }
		END { if (type != "" && fp != "") print type, fp, how; else exit 1 }'
}

# ssh_listening: whether something listens on TCP port SSH_PORT (IPv4 or IPv6).
ssh_listening() {
	ssh_hex=$(printf ':%04X ' "$SSH_PORT")
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
		awk -v p="$ssh_hex" 'index($0, p) && $4 == "0A" { found = 1 } END { exit !found }'
}

# ssh_supervise ARGS...: runs dropbear ARGS in the foreground forever with back-off
# (1 s doubling to 60 s, reset after a run of 10 minutes). dropbear logs to syslog
# (the node's rotated log on STATE); SSH_LOG, on /run, keeps only what it prints before
# it gets there (a bad argument, a port in use). On TERM (the stop sequence) it stops dropbear and every connection's
# dropbear process, then exits. Runs in a background subshell of PID 1.
ssh_supervise() {
	ssh_pid=
	trap 'kill -TERM $ssh_pid 2>/dev/null; pkill -TERM -x dropbear 2>/dev/null; exit 0' TERM INT
	ssh_backoff=1
	while :; do
		ssh_started=$(cut -d. -f1 /proc/uptime)
		dropbear "$@" >"$SSH_LOG" 2>&1 </dev/null &
		ssh_pid=$!
		wait "$ssh_pid"
		ssh_status=$?
		[ $(($(cut -d. -f1 /proc/uptime) - ssh_started)) -gt 600 ] && ssh_backoff=1
		milestone ssh exited status="$ssh_status" restarting-in="${ssh_backoff}s" log="$SSH_LOG"
		sleep "$ssh_backoff"
		ssh_backoff=$((ssh_backoff * 2))
		[ $ssh_backoff -gt 60 ] && ssh_backoff=60
	done
}

# ssh_start: the SSH server, when this node has authorized keys. Milestone:
#   labimg: ssh ready port=22 keys=N ssh-ed25519=SHA256:… ecdsa-sha2-nistp256=SHA256:… host-keys=created|kept
# or `labimg: ssh off reason=no-authorized-keys` for a node without keys; problems are
# warnings (the node runs on without SSH).
ssh_start() {
	ssh_keys=$LB_NODE_DIR/ssh/authorized_keys
	if [ ! -s "$ssh_keys" ]; then
		milestone ssh off reason=no-authorized-keys
		return 0
	fi
	if ! command -v dropbear >/dev/null 2>&1; then
		warn "ssh: dropbear is not in the image: no SSH server"
		return 0
	fi
	mkdir -p "$SSH_STATE" "$SSH_RUN" /var/log/labimg
	chmod 0700 "$SSH_STATE" "$SSH_RUN"
	# dropbear checks that the folders up to / are not group- or world-writable.
	if ! { cp "$ssh_keys" "$SSH_RUN/authorized_keys.new" &&
		chmod 0600 "$SSH_RUN/authorized_keys.new" &&
		mv -f "$SSH_RUN/authorized_keys.new" "$SSH_RUN/authorized_keys"; }; then
		warn "ssh: could not install the authorized keys in $SSH_RUN: no SSH server"
		return 0
	fi
	ssh_nkeys=$(grep -c '^[a-z]' "$SSH_RUN/authorized_keys")
	ssh_args="-F -s -p $SSH_PORT -D $SSH_RUN -P /run/labimg/dropbear.pid"
	ssh_fps=
	ssh_made=kept
	for ssh_type in $SSH_KEY_TYPES; do
		if ssh_line=$(ssh_host_key "$ssh_type"); then
			# "<type> <fingerprint> created|kept"
			ssh_fps="$ssh_fps ${ssh_line%% *}=$(echo "$ssh_line" | cut -d' ' -f2)"
			[ "${ssh_line##* }" = created ] && ssh_made=created
			ssh_args="$ssh_args -r $SSH_STATE/dropbear_${ssh_type}_host_key"
		else
			warn "ssh: could not make or read the $ssh_type host key in $SSH_STATE"
		fi
	done
	if [ -z "$ssh_fps" ]; then
		warn "ssh: no host key: no SSH server"
		return 0
	fi
	# shellcheck disable=SC2086 # one word per argument, no spaces in the paths
	(trap - USR1 USR2 && ssh_supervise $ssh_args) &
	LB_BG_PIDS="$LB_BG_PIDS $!"
	if poll 5 ssh_listening; then
		milestone "ssh ready port=$SSH_PORT keys=$ssh_nkeys$ssh_fps host-keys=$ssh_made"
	else
		warn "ssh: dropbear does not listen on port $SSH_PORT after 5 s: $(tail -n 2 "$SSH_LOG" 2>/dev/null | tr '\n' ' ')"
	fi
}
