//! Exit statuses of `labimg`, so that a script can tell a usage mistake, a bad
//! profile and a failed check apart without reading the message.

use crate::artifact::sign::VerifyError;
use crate::debian::{HashMismatch, SignatureError};
use crate::profile::ProfileErrors;

use super::{InvalidProfiles, OutputsMismatch};

/// Anything else: I/O, network, a tool that failed, a bug.
pub const OTHER: u8 = 1;
/// The command line is wrong (clap's own status for usage errors).
pub const USAGE: u8 = 2;
/// A profile does not load or validate (file, line and key are on stderr).
pub const PROFILE: u8 = 3;
/// A check of signed or hashed content failed: SHA256SUMS or its minisign
/// signature (`inspect`), an `InRelease` signature or a package hash (`build`, `fetch`),
/// an EFI binary's Secure Boot signature (`secureboot verify`).
pub const VERIFICATION: u8 = 4;
/// Standard output was closed before everything was written (`labimg … | head`):
/// nothing more is printed; 128 + SIGPIPE, as a shell reports a command the signal ended.
pub const STDOUT_CLOSED: u8 = 141;

/// The exit statuses, as `labimg --help` and the man page list them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success
  1    other error (I/O, network, a host tool failed)
  2    usage error (unknown flag, missing or malformed argument)
  3    profile problem (a profile does not load or validate)
  4    verification failed (SHA256SUMS or a signature, a package hash, an EFI
       binary's Secure Boot signature)
  141  standard output closed early (`labimg … | head`)";

/// The exit status for an error that ended a command: the first cause in its
/// chain that is a profile or verification error decides, else [`OTHER`].
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ProfileErrors>() || cause.is::<InvalidProfiles>() {
            return PROFILE;
        }
        if cause.is::<VerifyError>()
            || cause.is::<crate::secureboot::VerifyError>()
            || cause.is::<SignatureError>()
            || cause.is::<HashMismatch>()
            || cause.is::<OutputsMismatch>()
        {
            return VERIFICATION;
        }
    }
    OTHER
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn causes_decide_the_status_through_context() {
        let profile: anyhow::Error = ProfileErrors(Vec::new()).into();
        assert_eq!(exit_code(&profile.context("loading pi5")), PROFILE);
        let sig = Err::<(), _>(SignatureError::Malformed("x".into()))
            .context("reading InRelease")
            .context("resolve inputs")
            .unwrap_err();
        assert_eq!(exit_code(&sig), VERIFICATION);
        let sums = OutputsMismatch {
            files: vec!["a".into()],
        };
        assert_eq!(exit_code(&sums.into()), VERIFICATION);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), OTHER);
    }
}
