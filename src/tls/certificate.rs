//! What a node checks of its own certificate before serving with it. Each of these would
//! otherwise surface only at peers and clients, as handshake failures that name no file.

use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

/// Why `--tls-cert`'s first certificate cannot serve as this node's; `None` when it can.
/// `node_id` is given when peers check it (mutual TLS with `--tls-ca` and a `--node-id`)
/// against `dns_names`, the certificate's DNS names.
///
/// The name is required outside cluster mode too: a leader checks each `--follow`er's
/// `Fetch` and `Acknowledge` against the caller's certificate just as in a cluster, and a
/// manual leader becomes a follower by a restart with `--follow`, when such a certificate
/// would be refused by its peer instead of here.
pub(super) fn unfit(der: &[u8], mutual: bool, node_id: Option<&str>, dns_names: &[String]) -> Option<String> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(err) => return Some(format!("its certificate cannot be parsed: {err}")),
    };
    expired_or_early(&cert, ASN1Time::now()).or_else(|| wrong_usage(&cert, mutual)).or_else(|| {
        let node_id = node_id.filter(|_| mutual)?;
        (!dns_names.iter().any(|name| name == node_id)).then(|| {
            format!(
                "it does not name node id {node_id:?} (--node-id): its DNS names are [{}], and peers under \
                 mutual TLS (--tls-ca) take a node's id from them (docs/SECURITY.md)",
                dns_names.join(", ")
            )
        })
    })
}

fn expired_or_early(cert: &X509Certificate<'_>, now: ASN1Time) -> Option<String> {
    let validity = cert.validity();
    if now > validity.not_after {
        Some(format!("it expired on {} (renew it, then start or send SIGHUP)", validity.not_after))
    } else if now < validity.not_before {
        Some(format!("it is not valid before {} (is this machine's clock right?)", validity.not_before))
    } else {
        None
    }
}

/// A node serves with its certificate, and under mutual TLS also presents it to peers as a
/// client; an extended key usage, when present, must allow each use (none: any use).
fn wrong_usage(cert: &X509Certificate<'_>, mutual: bool) -> Option<String> {
    let usage = match cert.extended_key_usage() {
        Ok(Some(extension)) => extension.value,
        Ok(None) => return None,
        Err(err) => return Some(format!("its extended key usage cannot be parsed: {err}")),
    };
    if usage.any {
        return None;
    }
    if !usage.server_auth {
        return Some(
            "its extended key usage does not include serverAuth (a client-only certificate): a node's \
             certificate needs extendedKeyUsage=serverAuth,clientAuth"
                .to_string(),
        );
    }
    (mutual && !usage.client_auth).then(|| {
        "its extended key usage does not include clientAuth, which a node presents to its peers under \
         --tls-ca: a node's certificate needs extendedKeyUsage=serverAuth,clientAuth"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
    use rustls::pki_types::CertificateDer;

    /// [`super::unfit`] with the DNS names read as `load_node` reads them.
    fn unfit(der: &[u8], mutual: bool, node_id: Option<&str>) -> Option<String> {
        let names = super::super::certificate_names(&CertificateDer::from(der.to_vec()));
        super::unfit(der, mutual, node_id, &names)
    }

    fn certificate(names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        adjust(&mut params);
        params.self_signed(&KeyPair::generate().expect("key")).expect("cert").der().to_vec()
    }

    #[test]
    fn a_node_certificate_must_be_current_serve_and_name_the_node_under_mutual_tls() {
        let fine = certificate(&["n0"], |_| {});
        assert_eq!(unfit(&fine, true, Some("n0")), None);
        assert_eq!(unfit(&fine, false, Some("n1")), None, "the name is checked only under mutual TLS");
        assert!(unfit(&fine, true, Some("n1")).is_some_and(|why| why.contains("\"n1\"") && why.contains("[n0]")));
        let expired = certificate(&["n0"], |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        assert!(unfit(&expired, false, None).is_some_and(|why| why.contains("expired")));
        let early = certificate(&["n0"], |params| params.not_before = rcgen::date_time_ymd(4000, 1, 1));
        assert!(unfit(&early, false, None).is_some_and(|why| why.contains("not valid before")));
        let client_only =
            certificate(&["n0"], |params| params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert!(unfit(&client_only, false, None).is_some_and(|why| why.contains("serverAuth")));
        let server_only =
            certificate(&["n0"], |params| params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
        assert_eq!(unfit(&server_only, false, None), None);
        assert!(unfit(&server_only, true, None).is_some_and(|why| why.contains("clientAuth")));
    }
}
