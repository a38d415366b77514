//! meshd's configuration file: any text parses or is refused, never a panic; a file that
//! parses prints as TOML that parses to the same file, and both resolve (defaults and
//! validation) to the same configuration or the same error.
#![no_main]

use std::path::Path;

use control::config::ConfigFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/mesh/meshd.toml");
    let Ok(file) = ConfigFile::parse(text, path) else {
        return;
    };
    let printed = toml::to_string(&file).expect("a parsed config prints");
    let again = ConfigFile::parse(&printed, path)
        .unwrap_or_else(|e| panic!("a printed config does not parse ({e}):\n{printed}"));
    assert_eq!(again, file);
    let resolved = file.resolve("node-1").map_err(|e| e.to_string());
    assert_eq!(again.resolve("node-1").map_err(|e| e.to_string()), resolved);
});
