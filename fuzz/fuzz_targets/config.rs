//! A node's configuration file, read the way `levee up` / `levee node` read it (defaults,
//! then the file, through figment), then validated: any text gives a configuration or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = levee::config_file::from_toml(text) {
        let _ = config.validate();
    }
});
