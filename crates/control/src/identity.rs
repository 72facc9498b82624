//! Who is who in a fleet. Every member — the control plane and each host — has a TLS
//! identity (a self-signed certificate it makes once and keeps, or the operator's), and
//! members know each other by the SHA-256 fingerprint of that certificate, never by a
//! shared secret. Fleet connections are mutual TLS 1.3: a host pins the control plane's
//! fingerprint (from its enrolment token) and the control plane pins each host's (recorded
//! when the host enrolled), so neither side can be impersonated or overheard, and a
//! host's credential is a private key that never leaves it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate (DER), written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(certificate: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(certificate).into())
    }

    /// Parses 64 hex digits.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The fingerprint of the certificate a fleet peer proved it holds, put into each request's
/// extensions by the fleet listener.
#[derive(Clone, Copy, Debug)]
pub struct PeerFingerprint(pub Fingerprint);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {error}")]
    File { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// A certificate chain and its private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// The one name every fleet member's certificate and every fleet connection uses: members
/// are told apart by fingerprint, not by name.
const FLEET_NAME: &str = "cloudplay-fleet";

impl Identity {
    /// A fresh self-signed identity (ECDSA P-256).
    pub fn generate() -> Result<Identity, IdentityError> {
        let invalid = |e: rcgen::Error| IdentityError::Invalid(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(invalid)?;
        let certificate = rcgen::CertificateParams::new(vec![FLEET_NAME.to_string()])
            .map_err(invalid)?
            .self_signed(&key)
            .map_err(invalid)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Identity::new(vec![certificate.der().clone()], key))
    }

    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Identity {
        let fingerprint = Fingerprint::of(chain[0].as_ref());
        Identity { chain, key, fingerprint }
    }

    /// The identity kept in `dir` (`identity.crt.der`, `identity.key.der`), made on first use;
    /// the key file is readable by this user only.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let file = |path: &Path| {
            let path = path.to_path_buf();
            move |error| IdentityError::File { path, error }
        };
        let (cert_path, key_path) = (dir.join("identity.crt.der"), dir.join("identity.key.der"));
        if key_path.exists() {
            let certificate = std::fs::read(&cert_path).map_err(file(&cert_path))?;
            let key = std::fs::read(&key_path).map_err(file(&key_path))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
            return Ok(Identity::new(vec![CertificateDer::from(certificate)], key));
        }
        std::fs::create_dir_all(dir).map_err(file(dir))?;
        let identity = Identity::generate()?;
        write_private(&key_path, identity.key.secret_der()).map_err(file(&key_path))?;
        std::fs::write(&cert_path, identity.chain[0].as_ref()).map_err(file(&cert_path))?;
        Ok(identity)
    }

    /// The operator's certificate chain and key, in PEM files.
    pub fn from_pem_files(certificate: &Path, key: &Path) -> Result<Identity, IdentityError> {
        let invalid = |path: &Path| {
            let path = path.display().to_string();
            move |e: rustls::pki_types::pem::Error| IdentityError::Invalid(format!("{path}: {e}"))
        };
        let chain = CertificateDer::pem_file_iter(certificate)
            .map_err(invalid(certificate))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid(certificate))?;
        if chain.is_empty() {
            return Err(IdentityError::Invalid(format!("{}: no certificate", certificate.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(invalid(key))?;
        Ok(Identity::new(chain, key))
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// TLS for a fleet listener. `clients` says whose certificates it takes; every client
    /// must show one and prove it holds its key.
    pub fn server_config(&self, clients: Clients) -> Result<Arc<ServerConfig>, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(PinnedVerifier {
            pins: clients,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Invalid(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// TLS for connecting to the fleet member whose certificate has fingerprint `server`,
    /// showing this identity.
    pub fn client_config(&self, server: Fingerprint) -> Result<Arc<ClientConfig>, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(PinnedVerifier {
            pins: Clients::Only(server),
            algorithms: provider.signature_verification_algorithms,
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Invalid(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// The server name fleet connections ask for (not checked: the fingerprint is).
pub fn fleet_server_name() -> ServerName<'static> {
    ServerName::try_from(FLEET_NAME).expect("a valid DNS name")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Whose certificates a fleet listener takes.
#[derive(Clone, Copy, Debug)]
pub enum Clients {
    /// Anyone's: the control plane, where hosts enrol; handlers decide by fingerprint.
    Any,
    /// One member's: a host, which takes calls from its control plane only.
    Only(Fingerprint),
}

/// Checks the peer's certificate by fingerprint and its handshake signature with the
/// certificate's key (so presenting someone else's certificate is not enough).
#[derive(Debug)]
struct PinnedVerifier {
    pins: Clients,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self.pins {
            Clients::Any => Ok(()),
            Clients::Only(pin) if Fingerprint::of(certificate.as_ref()) == pin => Ok(()),
            Clients::Only(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }
}

/// The handshake-signature checks both verifier traits ask for: with the certificate's
/// own key, by the crypto provider's algorithms.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// An enrolment token as the operator hands it to a new host: a one-time secret and the
/// fingerprint of the control plane it enrols with (`cpe_<secret>.<fingerprint>`).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    pub secret: String,
    pub control: Fingerprint,
}

impl EnrolmentToken {
    pub fn parse(text: &str) -> Option<EnrolmentToken> {
        let (secret, fingerprint) = text.trim().split_once('.')?;
        let valid = secret.len() == 68
            && secret.starts_with("cpe_")
            && secret[4..].bytes().all(|b| b.is_ascii_hexdigit());
        Some(EnrolmentToken { secret: secret.to_string(), control: Fingerprint::parse(fingerprint)? })
            .filter(|_| valid)
    }
}

impl fmt::Display for EnrolmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.secret, self.control)
    }
}

impl fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnrolmentToken(cpe_…, control {})", self.control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_tokens_round_trip_and_refuse_garbage() {
        let fingerprint = Fingerprint::of(b"certificate");
        assert_eq!(Fingerprint::parse(&fingerprint.to_string()), Some(fingerprint));
        assert_eq!(Fingerprint::parse("zz"), None);
        assert_eq!(Fingerprint::parse(&"é".repeat(32)), None, "not ASCII: no panic on char boundaries");
        let token = EnrolmentToken { secret: format!("cpe_{}", "ab".repeat(32)), control: fingerprint };
        assert_eq!(EnrolmentToken::parse(&token.to_string()), Some(token.clone()));
        assert!(!format!("{token:?}").contains(&token.secret), "Debug does not show the secret");
        for bad in [
            "",
            "cpe_.x",
            &format!("cpe_{}", "ab".repeat(32)),
            &format!("cpx_{}.{fingerprint}", "ab".repeat(32)),
        ] {
            assert_eq!(EnrolmentToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn identities_are_kept_and_their_key_is_private() {
        let dir = std::env::temp_dir().join(format!("cloudplay-identity-{}", rand::random::<u64>()));
        let made = Identity::load_or_create(&dir).unwrap();
        let again = Identity::load_or_create(&dir).unwrap();
        assert_eq!(made.fingerprint(), again.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("identity.key.der")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "nobody else reads the key");
        made.server_config(Clients::Any).unwrap();
        made.client_config(again.fingerprint()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
