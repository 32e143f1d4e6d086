//! Secret tokens (console sessions, resident links): 256 bits from the OS, as hex.

/// A new secret token: 32 random bytes from the OS, 64 hex characters.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
