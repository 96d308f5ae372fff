//! rustls client configuration (ring provider; rumqttc is built with
//! `use-rustls-no-provider` so aws-lc-rs never enters the build).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::config::MqttConfig;
use super::PublishError;

/// Used when `ca_file` is not set.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Installs ring as the process-wide rustls provider (once; later calls and
/// a provider installed by someone else are fine). Anything in the process
/// that calls `ClientConfig::builder()` needs this.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tls_err(path: &Path, what: &str, e: impl std::fmt::Display) -> PublishError {
    PublishError::Tls(format!("{what} {}: {e}", path.display()))
}

pub fn client_config(cfg: &MqttConfig) -> Result<Arc<ClientConfig>, PublishError> {
    ensure_crypto_provider();
    let ca_path = cfg
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&ca_path)
        .map_err(|e| tls_err(&ca_path, "cannot read the CA file", e))?;
    for cert in certs {
        let cert = cert.map_err(|e| tls_err(&ca_path, "bad PEM in the CA file", e))?;
        roots
            .add(cert)
            .map_err(|e| tls_err(&ca_path, "unusable CA certificate in", e))?;
    }
    if roots.is_empty() {
        return Err(PublishError::Tls(format!(
            "the CA file {} holds no certificate; set mqtt.ca_file to a PEM bundle",
            ca_path.display()
        )));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| PublishError::Tls(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots);
    let config = match &cfg.client_auth {
        Some(auth) => {
            let (cert_path, key_path) = (&auth.cert_file, &auth.key_file);
            let chain = CertificateDer::pem_file_iter(cert_path)
                .map_err(|e| tls_err(cert_path, "cannot read the client certificate", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(cert_path, "bad PEM in the client certificate", e))?;
            if chain.is_empty() {
                return Err(tls_err(cert_path, "no certificate in", "empty"));
            }
            tracegate_drivers::secret_file::warn_if_readable_by_others(
                key_path,
                "MQTT client private key",
            );
            // The error text of a key file never includes its content.
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| tls_err(key_path, "cannot load the client key", e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                PublishError::Tls(format!(
                    "client certificate {} and key {} are unusable together: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
