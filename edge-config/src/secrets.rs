//! Secrets kept in files (`password_file`), read once, here, with one rule: the password is
//! the file's first line without its trailing whitespace (so an editor's final newline or a
//! stray `\r` never becomes part of it). After [`crate::load`] / [`crate::parse`] every
//! `password` of the configuration holds the secret, whether it was written inline or in a
//! file; the gateway never reads a password file itself.

use crate::model::Config;
use crate::path::KeyPath;
use std::path::Path;

/// The password in the file at `path`: its first line, trailing whitespace removed.
pub fn read_password_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").trim_end().to_owned())
}

/// Fills every `password` that is given as a `password_file`; a file that cannot be read is a
/// problem at its `password_file` key.
pub(crate) fn resolve(config: &mut Config) -> Vec<(KeyPath, String)> {
    let mut problems = Vec::new();
    let mut fill =
        |at: KeyPath, password: &mut Option<String>, file: &Option<std::path::PathBuf>| {
            let (None, Some(file)) = (&password, file) else {
                return;
            };
            match read_password_file(file) {
                Ok(secret) => *password = Some(secret),
                Err(e) => problems.push((
                    at,
                    format!(
                        "cannot read the password file \"{}\": {e}; check its permissions",
                        file.display()
                    ),
                )),
            }
        };
    if let Some(up) = &mut config.uplink {
        fill(
            KeyPath::of("uplink.password_file"),
            &mut up.password,
            &up.password_file,
        );
    }
    if let Some(up) = &mut config.station_link {
        fill(
            KeyPath::of("station_link.password_file"),
            &mut up.password,
            &up.password_file,
        );
    }
    if let Some(ext) = &mut config.broker.external {
        let at = KeyPath::of("broker.external.password_file");
        fill(at, &mut ext.password, &ext.password_file);
    }
    for (i, c) in config.compounds.iter_mut().enumerate() {
        let at = KeyPath::of("compounds").index(i).key("password_file");
        fill(at, &mut c.password, &c.password_file);
    }
    for (i, r) in config.broker.readers.iter_mut().enumerate() {
        let at = KeyPath::of("broker.readers").index(i).key("password_file");
        fill(at, &mut r.password, &r.password_file);
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_gives_its_first_line_without_trailing_whitespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, " s3cret \r\nsecond line\n").expect("write");
        assert_eq!(read_password_file(&file).expect("read"), " s3cret");
        std::fs::write(&file, "").expect("write");
        assert_eq!(read_password_file(&file).expect("read"), "");
    }
}
