//! The uplink's rustls client configuration, always with the ring provider passed
//! explicitly (no process-wide default provider is installed or needed).

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use edge_config::UplinkTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::UplinkError;

/// Builds the client configuration for `uplink.tls`: server verification against `ca` (or
/// the system trust store), an optional client certificate, and — only when the file says
/// `verify = false` explicitly — no verification at all (for testing).
pub fn client_config(tls: &UplinkTls) -> Result<Arc<ClientConfig>, UplinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if tls.verify {
        builder.with_root_certificates(roots(tls.ca.as_deref())?)
    } else {
        tracing::warn!(
            "uplink.tls.verify = false: the upstream server certificate is NOT verified"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(certs(cert, "uplink.tls.cert")?, private_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, UplinkError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let (added, _ignored) = roots.add_parsable_certificates(certs(path, "uplink.tls.ca")?);
            if added == 0 {
                return Err(UplinkError::NoCertificate {
                    what: "uplink.tls.ca",
                    path: path.to_owned(),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "uplink: problem reading the system trust store");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err(UplinkError::NoTrustAnchors);
    }
    Ok(roots)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, UplinkError> {
    std::fs::read(path).map_err(|source| UplinkError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    let pem = read(path, what)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(UplinkError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, UplinkError> {
    let pem = read(path, "uplink.tls.key")?;
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .ok()
        .flatten()
        .ok_or_else(|| UplinkError::NoPrivateKey {
            path: path.to_owned(),
        })
}

/// Accepts any server certificate (but still checks the handshake signatures). Only used
/// when `uplink.tls.verify = false` is written explicitly.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let tls = UplinkTls {
            ca: Some(ca.clone()),
            cert: None,
            key: None,
            verify: true,
        };
        let err = client_config(&tls).unwrap_err();
        assert!(
            matches!(err, UplinkError::NoCertificate { ref path, .. } if *path == ca),
            "{err}"
        );
        assert!(err.to_string().contains("uplink.tls.ca"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_names_the_file() {
        let tls = UplinkTls {
            ca: Some("/nonexistent/ca.pem".into()),
            cert: None,
            key: None,
            verify: true,
        };
        let err = client_config(&tls).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn an_unverified_configuration_builds_without_any_ca() {
        let tls = UplinkTls {
            ca: None,
            cert: None,
            key: None,
            verify: false,
        };
        assert!(client_config(&tls).is_ok());
    }
}
