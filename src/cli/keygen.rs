//! `m4c keygen`: make a firmware signing key; and the trust options every
//! command that loads a firmware's native code takes (`docs/SECURITY.md`).

use std::io::Write;
use std::path::{Path, PathBuf};

use m4c_runtime::bundle::sign::{SecretKey, TrustedKeys};
use m4c_runtime::outfile::{Options, Pending};

use super::CliResult;

/// Arguments of `m4c keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The secret key file to create (mode 0600; never replaced); the
    /// public key goes to KEY.pub.
    #[arg(short = 'o', long = "output", value_name = "KEY")]
    output: PathBuf,
}

/// Which public keys a firmware's native code must be signed by.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrustArgs {
    /// Trust firmware signed by this public key (KEY.pub from `m4c
    /// keygen`; repeat). Keys in the trust directory ($M4C_TRUST_DIR, else
    /// ~/.config/m4c/trusted-keys/*.pub) are trusted too.
    #[arg(long = "trust-key", value_name = "KEY.pub")]
    pub trust_keys: Vec<PathBuf>,
}

impl TrustArgs {
    /// The trusted keys: the given files and the trust directory's.
    pub fn keys(&self) -> CliResult<TrustedKeys> {
        let dir = TrustedKeys::default_dir();
        Ok(TrustedKeys::load(&self.trust_keys, dir.as_deref())?)
    }
}

/// `KEY.pub` beside `KEY`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Runs `m4c keygen`: both files are written completely or not at all.
pub fn run(args: KeygenArgs) -> CliResult<i32> {
    let key = SecretKey::generate()?;
    let public = public_path(&args.output);
    let mut secret_file = Pending::create(
        &args.output,
        &[],
        Options {
            mode: 0o600,
            no_clobber: true,
        },
    )?;
    let mut public_file = Pending::create(
        &public,
        &[],
        Options {
            mode: 0o666,
            no_clobber: true,
        },
    )?;
    let io = |p: &Path, e: std::io::Error| format!("cannot write {}: {e}", p.display());
    secret_file
        .writer()
        .write_all(key.to_text().as_bytes())
        .map_err(|e| io(&args.output, e))?;
    public_file
        .writer()
        .write_all(key.public().to_text().as_bytes())
        .map_err(|e| io(&public, e))?;
    secret_file.finish()?;
    public_file.finish()?;
    public_file.commit_new()?;
    if let Err(e) = secret_file.commit_new() {
        let _ = std::fs::remove_file(&public);
        return Err(e.into());
    }
    println!(
        "wrote {} (secret, keep it private) and {} (key {})",
        args.output.display(),
        public.display(),
        key.public().fingerprint()
    );
    Ok(0)
}
