use std::io::Write;
static FILE: std::sync::OnceLock<Option<std::sync::Mutex<std::fs::File>>> = std::sync::OnceLock::new();
pub fn mark(label: &str, host: &str) {
    let f = FILE.get_or_init(|| std::env::var("TTRACE").ok().map(|p| std::sync::Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap())));
    if let Some(f) = f {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
        let _ = writeln!(f.lock().unwrap(), "{now} {label} {host}");
    }
}
