//! `tracegate masterdata keygen | build | publish`: the integrator's side of
//! the format, for tests and small sites (a registry implements
//! docs/masterdata.md itself).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::format::{
    self, parse_secret_key, public_key_text, secret_key_text, verify_manifest, Built, Manifest,
    Scope, TrustedKeys,
};
use super::records::RawRecord;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("input record {index}: {message}")]
    Record { index: usize, message: String },
    #[error("{0}")]
    Format(#[from] format::FormatError),
    #[error("{0}")]
    Other(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> ToolError {
    ToolError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes a new key pair: `{prefix}.key` (secret, mode 0600, created, never
/// overwritten) and `{prefix}.pub` (for `[masterdata] trusted_keys`).
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf), ToolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(|e| file_err(&secret, e))?;
    f.write_all(secret_key_text(&key).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&secret, e))?;
    std::fs::write(&public, public_key_text(&key.verifying_key()))
        .map_err(|e| file_err(&public, e))?;
    Ok((secret, public))
}

pub fn load_secret_key(path: &Path) -> Result<SigningKey, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    parse_secret_key(&text).map_err(|e| file_err(path, e))
}

/// Input records: JSON (an array of records, or JSON Lines) or CSV with a
/// header row naming record fields (`t,gtin,from,to,serial,serials,reason,
/// markets,uid,read_point,shipment,sscc`, any subset and order); `serials`
/// and `markets` cells separate their items with `|`. Returns the payload
/// (one normalised JSON line per record), every record checked.
pub fn payload_from_input(input: &str, csv: bool) -> Result<Vec<u8>, ToolError> {
    let records: Vec<RawRecord> = if csv {
        csv_records(input)?
    } else if input.trim_start().starts_with('[') {
        serde_json::from_str(input).map_err(|e| ToolError::Other(format!("input JSON: {e}")))?
    } else {
        input
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| ToolError::Record {
                    index: i + 1,
                    message: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        r.check().map_err(|message| ToolError::Record {
            index: i + 1,
            message,
        })?;
        serde_json::to_writer(&mut out, r).map_err(|e| ToolError::Other(e.to_string()))?;
        out.push(b'\n');
    }
    Ok(out)
}

fn csv_records(input: &str) -> Result<Vec<RawRecord>, ToolError> {
    let mut lines = input.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| ToolError::Other("CSV input has no header row".into()))?
        .split(',')
        .map(str::trim)
        .collect();
    lines
        .enumerate()
        .map(|(i, line)| {
            let err = |message: String| ToolError::Record {
                index: i + 1,
                message,
            };
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != header.len() {
                return Err(err(format!(
                    "{} cells for {} columns",
                    cells.len(),
                    header.len()
                )));
            }
            let mut r = RawRecord::default();
            for (col, cell) in header.iter().zip(cells) {
                if cell.is_empty() {
                    continue;
                }
                let num = |c: &str| c.parse::<u64>().map_err(|e| err(format!("{col}: {e}")));
                let list = |c: &str| c.split('|').map(str::to_owned).collect::<Vec<_>>();
                let text = Some(cell.to_owned());
                match *col {
                    "t" => r.t = cell.to_owned(),
                    "gtin" => r.gtin = text,
                    "from" => r.from = Some(num(cell)?),
                    "to" => r.to = Some(num(cell)?),
                    "serial" => r.serial = text,
                    "serials" => r.serials = Some(list(cell)),
                    "reason" => {
                        r.reason = Some(
                            serde_json::from_value(serde_json::Value::String(cell.to_owned()))
                                .map_err(|e| err(format!("reason: {e}")))?,
                        )
                    }
                    "markets" => r.markets = Some(list(cell)),
                    "uid" => r.uid = text,
                    "read_point" => r.read_point = text,
                    "shipment" => r.shipment = text,
                    "sscc" => r.sscc = text,
                    other => return Err(err(format!("unknown column {other:?}"))),
                }
            }
            Ok(r)
        })
        .collect()
}

pub const MANIFEST_FILE: &str = "manifest.tgmd";

pub fn chunk_file(index: usize) -> String {
    format!("chunk-{index:05}.bin")
}

/// Writes a built dataset into `dir` (created): the manifest frame and one
/// file per chunk.
pub fn write_dataset(dir: &Path, built: &Built) -> Result<(), ToolError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let write = |name: String, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| file_err(&p, e))
    };
    for (i, c) in built.chunks.iter().enumerate() {
        write(chunk_file(i), c)?;
    }
    write(MANIFEST_FILE.to_owned(), &built.frame)
}

/// Reads a dataset directory back (checking it against its own manifest).
/// A dataset read from disk: manifest, frame, chunks.
pub type DatasetFiles = (Manifest, Vec<u8>, Vec<Vec<u8>>);

pub fn read_dataset(dir: &Path) -> Result<DatasetFiles, ToolError> {
    let mp = dir.join(MANIFEST_FILE);
    let frame = std::fs::read(&mp).map_err(|e| file_err(&mp, e))?;
    let body = frame
        .get(format::HEADER_LEN..)
        .ok_or_else(|| file_err(&mp, "too short"))?;
    let manifest = format::parse_manifest_body(body)?;
    let mut chunks = Vec::new();
    for i in 0..manifest.chunks.len() {
        let p = dir.join(chunk_file(i));
        let c = std::fs::read(&p).map_err(|e| file_err(&p, e))?;
        manifest.check_chunk(i as u64, &c)?;
        chunks.push(c);
    }
    Ok((manifest, frame, chunks))
}

/// `build`: input records → signed dataset directory.
#[derive(Debug)]
pub struct BuildArgs<'a> {
    pub key: &'a SigningKey,
    pub name: &'a str,
    pub version: u64,
    pub scope: Scope,
    pub input: &'a str,
    pub csv: bool,
    pub chunk_bytes: u32,
    pub out: &'a Path,
}

pub fn build(args: BuildArgs) -> Result<Manifest, ToolError> {
    let payload = payload_from_input(args.input, args.csv)?;
    let created = crate::event::iso_ms(chrono::Utc::now().timestamp_millis());
    let built = format::build(
        args.key,
        args.name,
        args.version,
        args.scope,
        &created,
        &payload,
        args.chunk_bytes,
    )?;
    // Proof that what was written is what a gateway accepts.
    verify_manifest(
        &built.frame,
        &TrustedKeys::new([args.key.verifying_key()]),
        u64::MAX,
    )?;
    write_dataset(args.out, &built)?;
    Ok(built.manifest)
}

/// The manifest topic of a dataset, from its signed scope.
pub fn manifest_topic(prefix: &str, m: &Manifest) -> String {
    match (&m.scope.site, &m.scope.gateway) {
        (Some(s), Some(g)) => format!("{prefix}/{s}/{g}/masterdata/{}", m.name),
        (Some(s), None) => format!("{prefix}/{s}/masterdata/{}", m.name),
        _ => format!("{prefix}/masterdata/{}", m.name),
    }
}

/// The messages `publish` sends, in order (chunks first, so a gateway that
/// sees the manifest finds every chunk retained): (topic, payload).
pub fn publish_plan(prefix: &str, dir: &Path) -> Result<Vec<(String, Vec<u8>)>, ToolError> {
    let (m, frame, chunks) = read_dataset(dir)?;
    let topic = manifest_topic(prefix, &m);
    let mut plan: Vec<(String, Vec<u8>)> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| (format!("{topic}/{}/{i}", m.version), c))
        .collect();
    plan.push((topic, frame));
    Ok(plan)
}

/// Publishes `plan` retained with QoS 1 to `host:port` (plain TCP) and
/// waits for every PUBACK.
pub async fn publish(
    host: &str,
    port: u16,
    plan: Vec<(String, Vec<u8>)>,
    timeout: Duration,
) -> Result<(), ToolError> {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let mut o = MqttOptions::new(
        format!("tracegate-masterdata-{}", std::process::id()),
        host,
        port,
    );
    let largest = plan.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    o.set_max_packet_size(largest + 4096, largest + 4096);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, plan.len() + 1);
    let want = plan.len();
    let run = async {
        for (topic, payload) in plan {
            client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .map_err(|e| ToolError::Other(format!("publish: {e}")))?;
        }
        let mut acked = 0;
        while acked < want {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(ToolError::Other(format!("broker {host}:{port}: {e}"))),
            }
        }
        let _ = client.disconnect().await;
        Ok(())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| ToolError::Other(format!("no PUBACK for every message within {timeout:?}")))?
}

/// `show`: the datasets in force in the store of `config`, each re-verified
/// with the configured trusted keys, one line each.
pub fn show(config: &crate::config::Config) -> Result<String, ToolError> {
    use std::fmt::Write as _;
    let stored = crate::store::masterdata::read_active(&config.store.path)
        .map_err(|e| ToolError::Other(e.to_string()))?;
    let trusted = config
        .masterdata
        .as_ref()
        .map(super::config::load_trusted_keys);
    let mut out = String::new();
    if stored.is_empty() {
        out.push_str("no master data in force\n");
    }
    for d in stored {
        let verdict = match &trusted {
            None => "not checked (no [masterdata] section)".to_owned(),
            Some(Err(e)) => format!("not checked: {}", e.join("; ")),
            Some(Ok(keys)) => match verify_manifest(&d.manifest, keys, u64::MAX) {
                Ok(v) => {
                    let payload = d.chunks.concat();
                    match format::check_payload(&v.manifest, &payload) {
                        Ok(()) => {
                            let mut n = 0u64;
                            match super::records::parse_payload(&payload, |_| n += 1) {
                                Ok(_) => format!(
                                    "verified, {n} records, scope {}, signed by {}",
                                    v.manifest.scope, v.key
                                ),
                                Err(e) => format!("REFUSED: {e}"),
                            }
                        }
                        Err(e) => format!("REFUSED: {e}"),
                    }
                }
                Err(e) => format!("REFUSED: {e}"),
            },
        };
        let _ = writeln!(
            out,
            "{} version {} applied {}: {}",
            d.name,
            d.version,
            crate::event::iso_ms(d.applied_utc_ms),
            verdict
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_inputs_give_the_same_payload() {
        let csv = "t,gtin,from,to,serials,reason,markets\n\
                   commissioned,09506000134352,1,100,,,\n\
                   blocked,09506000134352,,,7|A9,stolen,\n\
                   market,09506000134352,,,,,DE|AT\n";
        let json = r#"[
            {"t":"commissioned","gtin":"09506000134352","from":1,"to":100},
            {"t":"blocked","gtin":"09506000134352","serials":["7","A9"],"reason":"stolen"},
            {"t":"market","gtin":"09506000134352","markets":["DE","AT"]}
        ]"#;
        let a = payload_from_input(csv, true).unwrap();
        assert_eq!(a, payload_from_input(json, false).unwrap());
        let lines = String::from_utf8(a.clone()).unwrap();
        assert_eq!(payload_from_input(&lines, false).unwrap(), a);
        assert_eq!(lines.lines().count(), 3);
    }

    #[test]
    fn a_bad_input_record_is_named() {
        let err =
            payload_from_input("t,gtin,serial\nblocked,09506000134352,1\n", true).unwrap_err();
        assert!(
            err.to_string().contains("record 1: `reason` is missing"),
            "{err}"
        );
        let err = payload_from_input("t,colour\nx,y\n", true).unwrap_err();
        assert!(err.to_string().contains("unknown column"), "{err}");
    }

    #[test]
    fn keygen_build_and_read_back_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(&dir.path().join("registry")).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "secret key readable by others: {mode:o}");
        assert!(
            keygen(&dir.path().join("registry")).is_err(),
            "overwrote a key"
        );
        let key = load_secret_key(&secret).unwrap();
        let out = dir.path().join("ds");
        let input =
            "{\"t\":\"commissioned\",\"gtin\":\"09506000134352\",\"from\":1,\"to\":9}\n".repeat(50);
        let m = build(BuildArgs {
            key: &key,
            name: "commissioned",
            version: 4,
            scope: Scope {
                site: Some("s1".into()),
                gateway: None,
            },
            input: &input,
            csv: false,
            chunk_bytes: 1024,
            out: &out,
        })
        .unwrap();
        assert!(m.chunks.len() > 1);
        let plan = publish_plan("tg", &out).unwrap();
        assert_eq!(plan.last().unwrap().0, "tg/s1/masterdata/commissioned");
        assert_eq!(plan[0].0, "tg/s1/masterdata/commissioned/4/0");
        let trusted = TrustedKeys::new([super::super::config::load_key(&public).unwrap()]);
        verify_manifest(&plan.last().unwrap().1, &trusted, 1 << 20).unwrap();
    }
}
