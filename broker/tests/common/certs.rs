//! Certificates made for a test with rcgen: a CA, a server certificate for
//! 127.0.0.1 and `localhost`, client certificates (good, from another CA,
//! expired), as PEM files in a directory, and rustls client configurations
//! for rumqttc.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and its key, written as `{name}.crt` and `{name}.key`.
pub struct Pem {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

/// A certificate authority that signs test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA's certificate file.
    pub cert: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/{name}.crt`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, issuer.pem())?;
        Ok(TestCa {
            issuer,
            cert,
            dir: dir.to_path_buf(),
        })
    }

    /// A server certificate for 127.0.0.1 and `localhost`.
    pub fn server(&self, name: &str) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        self.sign(name, params)
    }

    /// A client certificate with common name `cn` and DNS name `san`.
    pub fn client(&self, name: &str, cn: &str, san: &str) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::new(vec![san.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(name, params)
    }

    /// A client certificate that expired in 2020.
    pub fn expired_client(&self, name: &str, cn: &str) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::new(vec![format!("{cn}.devices")])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
        self.sign(name, params)
    }

    fn sign(&self, name: &str, params: CertificateParams) -> anyhow::Result<Pem> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pem = Pem {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&pem.cert, cert.pem())?;
        std::fs::write(&pem.key, key.serialize_pem())?;
        Ok(pem)
    }
}

/// A rustls client configuration trusting `ca`, presenting `identity` if
/// given.
pub fn client_config(
    ca: &Path,
    identity: Option<&Pem>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain = CertificateDer::pem_file_iter(&pem.cert)?
                .collect::<Result<Vec<_>, _>>()
                .context("client certificate")?;
            let key = PrivateKeyDer::from_pem_file(&pem.key).context("client key")?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}
