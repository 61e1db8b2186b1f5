# shellcheck shell=sh
# logship.sh: send the node's log to labimg serve (README.md "Logs", "Shipping").
# Sourced by stage 2 right after start_logging (needs common.sh); installed as
# /usr/lib/labimg/logship.sh. log_ship_start starts two background processes, both
# in LB_BG_PIDS (the stop sequence ends them): `tail -F` of the log into a FIFO, and
# a loop that POSTs the lines in batches with the node's token. Nothing here ever
# waits on the network in PID 1: a server that is down costs lines only when more
# than LOGSHIP_MAX bytes are waiting.

LOGSHIP_FILE=/var/log/labimg/messages
LOGSHIP_DIR=/run/labimg/logship
# A batch goes out at LOGSHIP_LINES lines, LOGSHIP_BATCH bytes, or when its first
# line is LOGSHIP_SECS old. Unsent lines are kept up to LOGSHIP_MAX bytes (the server
# takes 64 KiB a request); past that the older half is dropped.
LOGSHIP_LINES=100
LOGSHIP_BATCH=32768
LOGSHIP_SECS=5
LOGSHIP_MAX=49152
# A failed POST is tried again after this many seconds, doubled each time up to 60.
LOGSHIP_RETRY=10

# logship_url: where this node posts its log, printed (nothing: no shipping).
# labimg.logs=<url> when given (labimg.logs=0 turns shipping off); else derived
# from the config URL labimg serve gives a node it knows:
# <base>/v1/nodes/<id>/config -> <base>/v1/nodes/<id>/logs. Needs labimg.token.
logship_url() {
	[ -n "$(cmdline_get labimg.token)" ] || return 0
	logship_u=$(cmdline_get labimg.logs)
	case "$logship_u" in
	0 | off | no) return 0 ;;
	http://* | https://*)
		printf '%s' "$logship_u"
		return 0
		;;
	esac
	logship_u=$(cmdline_get labimg.config)
	case "$logship_u" in
	http*://*/v1/nodes/*/config) printf '%s' "${logship_u%/config}/logs" ;;
	esac
}

# logship_now: seconds since boot into logship_t (no fork: the loop runs per line).
logship_now() {
	read -r logship_t _ </proc/uptime
	logship_t=${logship_t%.*}
}

# logship_loop URL TOKEN: read log lines on stdin and POST them in batches to URL
# (Authorization: Bearer TOKEN). A failed POST keeps the batch and tries again after
# LOGSHIP_RETRY s, then twice that, up to 60; a refused one (HTTP 4xx: malformed, too
# big) is dropped; a refused token (401/403) ends the shipping. At the end of stdin
# what is waiting is sent once more and the loop ends.
logship_loop() {
	logship_pending=$LOGSHIP_DIR/pending
	: >"$logship_pending" || return 0
	logship_n=0
	logship_bytes=0
	logship_first=0
	logship_retry=0
	logship_backoff=$LOGSHIP_RETRY
	while :; do
		logship_now
		logship_t0=$logship_t
		# shellcheck disable=SC3045 # busybox ash's read has -t
		if IFS= read -r -t "$LOGSHIP_SECS" logship_line; then
			printf '%s\n' "$logship_line" >>"$logship_pending"
			[ "$logship_n" -eq 0 ] && logship_first=$logship_t0
			logship_n=$((logship_n + 1))
			logship_bytes=$((logship_bytes + ${#logship_line} + 1))
			[ "$logship_bytes" -gt "$LOGSHIP_MAX" ] && logship_trim
		else
			# busybox read -t says 1 for a timeout and for the end of input alike:
			# a read that failed well before its timeout met the end.
			logship_now
			if [ $((logship_t - logship_t0)) -lt $((LOGSHIP_SECS - 1)) ]; then
				[ "$logship_n" -gt 0 ] && logship_post "$1" "$2"
				return 0
			fi
		fi
		[ "$logship_n" -gt 0 ] || continue
		logship_now
		[ "$logship_t" -ge "$logship_retry" ] || continue
		[ "$logship_n" -ge "$LOGSHIP_LINES" ] || [ "$logship_bytes" -ge "$LOGSHIP_BATCH" ] ||
			[ $((logship_t - logship_first)) -ge "$LOGSHIP_SECS" ] || continue
		logship_post "$1" "$2" || return 0
	done
}

# logship_trim: keep the newer half of the waiting lines (whole lines), noting the cut.
logship_trim() {
	{
		echo "labimg: WARNING: log shipping fell behind, older lines dropped here"
		tail -c $((LOGSHIP_MAX / 2)) "$logship_pending" | sed 1d
	} >"$logship_pending.tmp" && mv -f "$logship_pending.tmp" "$logship_pending"
	logship_n=$(wc -l <"$logship_pending")
	logship_bytes=$(wc -c <"$logship_pending")
}

# logship_post URL TOKEN: send the waiting lines; false when shipping must stop.
logship_post() {
	if logship_err=$(timeout 15 wget -q -O /dev/null --header "Authorization: Bearer $2" \
		--post-file "$logship_pending" "$1" 2>&1); then
		: >"$logship_pending"
		logship_n=0
		logship_bytes=0
		logship_retry=0
		logship_backoff=$LOGSHIP_RETRY
		return 0
	fi
	# busybox wget: "server returned error: HTTP/1.1 401 Unauthorized".
	case "$logship_err" in
	*"error: HTTP/"*" 401"* | *"error: HTTP/"*" 403"*)
		warn "log shipping to $1 stopped: the server refused this node's token"
		return 1
		;;
	*"error: HTTP/"*" 4"[0-9][0-9]*)
		warn "log shipping: $1 refused a batch of $logship_n lines, dropped: $(printf '%s' "$logship_err" | tr '\n' ' ')"
		: >"$logship_pending"
		logship_n=0
		logship_bytes=0
		return 0
		;;
	esac
	logship_now
	logship_retry=$((logship_t + logship_backoff))
	logship_backoff=$((logship_backoff * 2))
	[ "$logship_backoff" -gt 60 ] && logship_backoff=60
	return 0
}

# logship_last URL TOKEN: send what is waiting (at most 3 s) and exit.
logship_last() {
	[ "${logship_n:-0}" -gt 0 ] &&
		timeout 3 wget -q -O /dev/null --header "Authorization: Bearer $2" \
			--post-file "$logship_pending" "$1" >/dev/null 2>&1
	exit 0
}

# log_ship_start: when this node has somewhere to ship to (logship_url) and a token,
# follow the log from its first line (the boot so far) and ship it in the background.
log_ship_start() {
	LB_LOGSHIP_URL=$(logship_url)
	[ -n "$LB_LOGSHIP_URL" ] || return 0
	logship_fifo=$LOGSHIP_DIR/lines.fifo
	if ! { mkdir -p "$LOGSHIP_DIR" && rm -f "$logship_fifo" && mkfifo -m 0600 "$logship_fifo"; }; then
		warn "log shipping off: cannot make $logship_fifo"
		return 0
	fi
	(trap - TERM INT USR1 USR2 && exec tail -n +1 -F "$LOGSHIP_FILE" 2>/dev/null >"$logship_fifo") &
	LB_BG_PIDS="$LB_BG_PIDS $!"
	(
		trap - INT USR1 USR2
		logship_token=$(cmdline_get labimg.token)
		# The stop sequence's TERM: one last, short try with what is waiting.
		trap 'logship_last "$LB_LOGSHIP_URL" "$logship_token"' TERM
		logship_loop "$LB_LOGSHIP_URL" "$logship_token" <"$logship_fifo"
	) &
	LB_BG_PIDS="$LB_BG_PIDS $!"
	milestone logs shipping url="$LB_LOGSHIP_URL"
}
