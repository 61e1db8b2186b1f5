# labimg node OS: STATE encrypted with LUKS2 under a key sealed to the TPM 2.0, installed
# as /usr/lib/labimg/statecrypt.sh only in images whose profile sets
# `[secure-boot] tpm-seal-state = true`; those images also carry Debian's cryptsetup-bin
# and tpm2-tools. POSIX sh for busybox ash, sourced (never executed) by stage 2, whose
# setup_state calls statecrypt_check before it makes a new STATE partition, then
# statecrypt_seal_new (first boot) or statecrypt_unlock (every later boot). Uses
# common.sh's milestone and fatal. README.md "STATE encryption" has the policy and
# what it does and does not protect against.
#
# The key: 32 random bytes from the TPM's generator, the only LUKS2 passphrase of STATE.
# It is sealed (TPM2_Create with the key as sensitive data) under a primary key of the
# storage (owner) hierarchy, which the TPM derives from its seed every boot from the
# same template, with a policy of one assertion: PolicyPCR on sha256 PCR 7. The object
# has no userWithAuth, so only that policy unseals it, and fixedTPM|fixedParent, so it
# only ever loads under this TPM's storage primary. The sealed public and private blobs
# are kept in the LUKS2 header as a token (type labimg-tpm2) and travel with the disk;
# without this TPM they are useless. The unsealed key goes to a file on /run (a tmpfs,
# mode 0600), is read by cryptsetup and deleted; it never touches STATE or the console.
#
# PCR 7 is what the firmware measures about Secure Boot: the SecureBoot, PK, KEK, db
# and dbx variables and the db certificate that verified each image it started. It is
# the same after a signed A/B upgrade (the same db key signs the new UKI), and it
# differs when Secure Boot is off, other keys are enrolled, or the chain was verified by
# another certificate.

# shellcheck disable=SC2034 # (the whole file) LB_STATE_FS and LB_STATE_FIELDS are read by stage 2
# Preset by the host tests (builder/tests/statecrypt.rs); constants on a node.
: "${STATECRYPT_TCTI:=device:/dev/tpmrm0}"
: "${STATECRYPT_RUN:=/run/labimg/statecrypt}"
: "${STATECRYPT_EFIVARS:=/sys/firmware/efi/efivars}"
: "${STATECRYPT_NAME:=state}"
STATECRYPT_PCRS=sha256:7
STATECRYPT_TOKEN_TYPE=labimg-tpm2
# The EFI global variable GUID (UEFI spec: SecureBoot, PK, KEK, db, dbx).
STATECRYPT_SECUREBOOT_VAR=SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c

# State for stage 2: the device holding the filesystem (/dev/mapper/state) and the
# fields setup_state adds to its `state mounted` milestone.
LB_STATE_FS=
LB_STATE_FIELDS=

# statecrypt_tpm: tpm2-tools with the node's TCTI, its output into tpm.log.
statecrypt_tpm() {
	TPM2TOOLS_TCTI=$STATECRYPT_TCTI "$@" >>"$STATECRYPT_RUN/tpm.log" 2>&1
}

# statecrypt_tpm_error: the TPM's answer tpm2-tools logged last, as in
# `Esys_Load(0x1DF) - tpm:parameter(1):integrity check failed` (else its last error
# line), for FATAL messages.
statecrypt_tpm_error() {
	statecrypt_err=$(sed -n 's/^ERROR: *\(E[a-z]*s_[A-Za-z_]*(0x[0-9A-Fa-f]*).*\)/\1/p' "$STATECRYPT_RUN/tpm.log" 2>/dev/null | tail -n 1)
	[ -n "$statecrypt_err" ] ||
		statecrypt_err=$(grep -i 'error\|fail' "$STATECRYPT_RUN/tpm.log" 2>/dev/null | tail -n 1)
	printf '%s' "$statecrypt_err" | tr -s ' \t' '  '
}

# statecrypt_secureboot: prints on, off or unknown (no EFI variables: not UEFI), from
# the SecureBoot EFI variable (4 bytes of attributes, then 1 or 0).
statecrypt_secureboot() {
	if [ "$STATECRYPT_EFIVARS" = /sys/firmware/efi/efivars ] && [ -d /sys/firmware/efi ] &&
		! mountpoint -q "$STATECRYPT_EFIVARS"; then
		# Read-only: nothing here writes variables.
		mount -t efivarfs -o ro,nosuid,nodev,noexec efivarfs "$STATECRYPT_EFIVARS" 2>/dev/null
	fi
	statecrypt_var=$STATECRYPT_EFIVARS/$STATECRYPT_SECUREBOOT_VAR
	if [ ! -r "$statecrypt_var" ]; then
		echo unknown
		return
	fi
	# Read whole (efivarfs files cannot seek: od -j fails there), the fifth byte kept.
	# shellcheck disable=SC2046 # one word a byte
	set -- $(od -A n -t x1 -v <"$statecrypt_var")
	if [ "${5:-}" = 01 ]; then
		echo on
	else
		echo off
	fi
}

# statecrypt_check WHAT: what sealing and unsealing need of the machine, checked before
# anything is written: a TPM 2.0 and Secure Boot on. WHAT (seal|unlock) words the
# FATAL. Makes STATECRYPT_RUN.
statecrypt_check() {
	if ! { mkdir -p "$STATECRYPT_RUN" && chmod 0700 "$STATECRYPT_RUN"; }; then
		fatal "cannot make $STATECRYPT_RUN"
	fi
	: >"$STATECRYPT_RUN/tpm.log"
	case "$STATECRYPT_TCTI" in
	device:*)
		statecrypt_dev=${STATECRYPT_TCTI#device:}
		poll 5 test -c "$statecrypt_dev" ||
			fatal "STATE is sealed to the TPM ([secure-boot] tpm-seal-state), but this machine has no TPM 2.0 ($statecrypt_dev missing): give it one (Proxmox: qm set <vmid> --tpmstate0 <storage>:1,version=v2.0); STATE stays locked"
		;;
	esac
	# Transient objects left by an earlier run (only without the kernel's resource manager,
	# /dev/tpmrm0, which flushes them when tpm2-tools closes it: the host tests' swtpm).
	statecrypt_tpm tpm2_flushcontext -t
	statecrypt_sb=$(statecrypt_secureboot)
	if [ "$statecrypt_sb" != on ]; then
		if [ "$1" = seal ]; then
			fatal "STATE is sealed to Secure Boot (PCR 7); Secure Boot is $statecrypt_sb: refusing to create and seal STATE: enroll labimg's keys and turn Secure Boot on (README \"Secure Boot\")"
		fi
		fatal "STATE is sealed to Secure Boot (PCR 7); Secure Boot is $statecrypt_sb: STATE stays locked: turn Secure Boot on again with the same keys"
	fi
}

# statecrypt_primary: the storage primary key into primary.ctx: the same template every
# time (ECC P-256, sha256: quick to derive), so the same key under the same seed. The
# context file stays usable after the flush (tpm2-tools loads it again when needed);
# without the kernel's resource manager (the host tests' swtpm) loaded objects would
# pile up in the TPM's few slots.
statecrypt_primary() {
	statecrypt_tpm tpm2_createprimary -C o -g sha256 -G ecc -c "$STATECRYPT_RUN/primary.ctx" &&
		statecrypt_tpm tpm2_flushcontext -t
}

# statecrypt_pcr7: the current sha256 PCR 7 as hex (for the token and messages).
statecrypt_pcr7() {
	TPM2TOOLS_TCTI=$STATECRYPT_TCTI tpm2_pcrread "$STATECRYPT_PCRS" 2>/dev/null |
		sed -n 's/^ *7 *: *0x\([0-9A-Fa-f]*\).*/\1/p' | tr '[:upper:]' '[:lower:]'
}

# statecrypt_b64 FILE: FILE as one line of base64.
statecrypt_b64() {
	base64 -w 0 "$1"
}

# statecrypt_token_get JSON KEY: a string value of the token's JSON (cryptsetup prints
# it with its own spacing and may escape / as \/).
statecrypt_token_get() {
	printf '%s' "$1" | sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" | sed 's#\\/#/#g'
}

# statecrypt_open DEV KEYFILE: cryptsetup open DEV as STATECRYPT_NAME with KEYFILE, which
# is then deleted.
statecrypt_open() {
	cryptsetup open --type luks2 --key-file "$2" "$1" "$STATECRYPT_NAME" >"$STATECRYPT_RUN/open.log" 2>&1
	statecrypt_rc=$?
	rm -f "$2"
	return $statecrypt_rc
}

# statecrypt_seal_new DEV: first boot. DEV is the new, empty STATE partition: a random
# key sealed to this TPM under the PCR 7 policy, DEV formatted LUKS2 with it, the sealed
# blobs into the header as token 0, DEV opened. Sets LB_STATE_FS and LB_STATE_FIELDS;
# any failure is FATAL (call statecrypt_check first).
statecrypt_seal_new() {
	statecrypt_r=$STATECRYPT_RUN
	if ! { (umask 077 && statecrypt_tpm tpm2_getrandom -o "$statecrypt_r/key" 32) &&
		[ "$(wc -c <"$statecrypt_r/key")" -eq 32 ]; }; then
		fatal "the TPM gave no random key: $(statecrypt_tpm_error)"
	fi
	statecrypt_primary || fatal "the TPM did not make its storage primary key: $(statecrypt_tpm_error)"
	# The policy digest PolicyPCR(sha256:7) gives with PCR 7 as it is now (a trial session).
	if ! { statecrypt_tpm tpm2_startauthsession -S "$statecrypt_r/trial.ctx" &&
		statecrypt_tpm tpm2_policypcr -S "$statecrypt_r/trial.ctx" -l "$STATECRYPT_PCRS" -L "$statecrypt_r/policy.digest" &&
		statecrypt_tpm tpm2_flushcontext "$statecrypt_r/trial.ctx"; }; then
		fatal "the TPM did not compute the PCR 7 policy: $(statecrypt_tpm_error)"
	fi
	# No userwithauth: the policy is the only way to unseal. fixedtpm|fixedparent: it
	# loads only under this TPM's storage primary. noda: a policy failure is not a
	# password guess, so it must not count towards the dictionary-attack lockout.
	statecrypt_tpm tpm2_create -C "$statecrypt_r/primary.ctx" -g sha256 -L "$statecrypt_r/policy.digest" \
		-a 'fixedtpm|fixedparent|noda' -i "$statecrypt_r/key" -u "$statecrypt_r/seal.pub" -r "$statecrypt_r/seal.priv" ||
		{ rm -f "$statecrypt_r/key"; fatal "the TPM did not seal STATE's key: $(statecrypt_tpm_error)"; }
	statecrypt_tpm tpm2_flushcontext -t
	statecrypt_pcr7=$(statecrypt_pcr7)
	# pbkdf2 with the fewest iterations cryptsetup allows: the passphrase is a random
	# 256-bit key, so a slow KDF (argon2id's default is about 1 GiB and 2 s of a real
	# CPU, far more under TCG) adds no strength, only boot time and memory.
	cryptsetup luksFormat --type luks2 --batch-mode --key-file "$statecrypt_r/key" --label STATE \
		--pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256 --sector-size 4096 \
		"$1" >"$statecrypt_r/format.log" 2>&1 ||
		{ rm -f "$statecrypt_r/key"; fatal "cryptsetup luksFormat $1 failed: $(tail -n 2 "$statecrypt_r/format.log" | tr '\n' ' ')"; }
	printf '{"type":"%s","keyslots":["0"],"tpm2-pcrs":"%s","tpm2-primary":"ecc-p256-sha256","tpm2-pcr7-at-seal":"%s","tpm2-blob-pub":"%s","tpm2-blob-priv":"%s"}\n' \
		"$STATECRYPT_TOKEN_TYPE" "$STATECRYPT_PCRS" "$statecrypt_pcr7" \
		"$(statecrypt_b64 "$statecrypt_r/seal.pub")" "$(statecrypt_b64 "$statecrypt_r/seal.priv")" >"$statecrypt_r/token.json"
	cryptsetup token import --token-id 0 --json-file "$statecrypt_r/token.json" "$1" >"$statecrypt_r/token.log" 2>&1 ||
		{ rm -f "$statecrypt_r/key"; fatal "storing the sealed key in $1's LUKS2 header failed: $(tail -n 2 "$statecrypt_r/token.log" | tr '\n' ' ')"; }
	statecrypt_open "$1" "$statecrypt_r/key" ||
		fatal "cryptsetup open $1 failed right after formatting it: $(tail -n 2 "$statecrypt_r/open.log" | tr '\n' ' ')"
	LB_STATE_FS=/dev/mapper/$STATECRYPT_NAME
	LB_STATE_FIELDS="state=luks2 tpm=sealed"
	milestone state sealed dev="$1" luks=2 tpm=sealed pcrs="$STATECRYPT_PCRS"
}

# statecrypt_unlock DEV: every later boot. Unseals the key from DEV's token with the
# PCR 7 policy and opens DEV; never formats anything. Sets LB_STATE_FS and
# LB_STATE_FIELDS; any failure is FATAL, saying why (call statecrypt_check first).
statecrypt_unlock() {
	statecrypt_r=$STATECRYPT_RUN
	cryptsetup isLuks --type luks2 "$1" ||
		fatal "STATE $1 is not LUKS2-encrypted, but this image seals STATE to the TPM ([secure-boot] tpm-seal-state): it was made by an image without that option, and labimg never reformats STATE (to start over with an encrypted STATE, wipe it: it is then made anew on the next boot)"
	statecrypt_token=$(cryptsetup token export --token-id 0 "$1" 2>"$statecrypt_r/token.log")
	statecrypt_pub=$(statecrypt_token_get "$statecrypt_token" tpm2-blob-pub)
	statecrypt_priv=$(statecrypt_token_get "$statecrypt_token" tpm2-blob-priv)
	statecrypt_sealed_pcr7=$(statecrypt_token_get "$statecrypt_token" tpm2-pcr7-at-seal)
	if [ "$(statecrypt_token_get "$statecrypt_token" type)" != "$STATECRYPT_TOKEN_TYPE" ] ||
		[ -z "$statecrypt_pub" ] || [ -z "$statecrypt_priv" ]; then
		fatal "STATE $1 has no $STATECRYPT_TOKEN_TYPE token in its LUKS2 header (its first boot stopped before sealing, or the header was changed): STATE stays locked"
	fi
	if ! { printf "%s" "$statecrypt_pub" | base64 -d >"$statecrypt_r/seal.pub" &&
		printf "%s" "$statecrypt_priv" | base64 -d >"$statecrypt_r/seal.priv"; }; then
		fatal "STATE $1's $STATECRYPT_TOKEN_TYPE token is damaged (not base64)"
	fi
	statecrypt_primary || fatal "the TPM did not make its storage primary key: $(statecrypt_tpm_error)"
	if ! { statecrypt_tpm tpm2_load -C "$statecrypt_r/primary.ctx" -u "$statecrypt_r/seal.pub" -r "$statecrypt_r/seal.priv" -c "$statecrypt_r/seal.ctx" &&
		statecrypt_tpm tpm2_flushcontext -t; }; then
		fatal "STATE's sealed key does not load into this TPM ($(statecrypt_tpm_error)): the disk was sealed by another machine's TPM, or this TPM was cleared or replaced; STATE stays locked (it has no recovery key: README \"STATE encryption\")"
	fi
	# The TPM refuses the unseal with TPM_RC_PCR_CHANGED (0x128) when any PCR was
	# extended between PolicyPCR and the unseal (seen on a trial boot under TCG with the
	# PCR value itself unchanged): the session is started again, a few times.
	statecrypt_try=0
	while :; do
		statecrypt_try=$((statecrypt_try + 1))
		if ! { statecrypt_tpm tpm2_startauthsession --policy-session -S "$statecrypt_r/session.ctx" &&
			statecrypt_tpm tpm2_policypcr -S "$statecrypt_r/session.ctx" -l "$STATECRYPT_PCRS"; }; then
			fatal "the TPM did not start the PCR 7 policy session: $(statecrypt_tpm_error)"
		fi
		(umask 077 && statecrypt_tpm tpm2_unseal -p "session:$statecrypt_r/session.ctx" -c "$statecrypt_r/seal.ctx" -o "$statecrypt_r/key")
		statecrypt_unsealed=$?
		statecrypt_tpm tpm2_flushcontext "$statecrypt_r/session.ctx"
		[ "$statecrypt_unsealed" -ne 0 ] && [ "$statecrypt_try" -lt 5 ] &&
			statecrypt_tpm_error | grep -q '(0x128)' && continue
		break
	done
	statecrypt_tpm tpm2_flushcontext -t
	if [ "$statecrypt_unsealed" -ne 0 ]; then
		rm -f "$statecrypt_r/key"
		fatal "STATE's key is not unsealed: the TPM's PCR 7 policy check failed ($(statecrypt_tpm_error)): PCR 7 (Secure Boot state: PK, KEK, db, dbx, the certificate that verified this boot) is $(statecrypt_pcr7), it was ${statecrypt_sealed_pcr7:-unknown} when STATE was sealed: other keys or firmware settings; STATE stays locked"
	fi
	statecrypt_open "$1" "$statecrypt_r/key" ||
		fatal "cryptsetup open $1 failed with the unsealed key: $(tail -n 2 "$statecrypt_r/open.log" | tr '\n' ' ')"
	LB_STATE_FS=/dev/mapper/$STATECRYPT_NAME
	LB_STATE_FIELDS="state=luks2 tpm=unsealed"
	milestone state unlocked dev="$1" luks=2 tpm=unsealed pcrs="$STATECRYPT_PCRS"
}
