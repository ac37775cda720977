//! KV cache types on the wire: what `load --cache-type-k/--cache-type-v` (and `plan`) ask for
//! and what `status`, `list` and plans report, as llama.cpp's `-ctk/-ctv` name them.

use serde::{Deserialize, Serialize};

/// The element type of a model's KV cache keys or values.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCacheType {
    /// Half floats (the default, as llama.cpp's).
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// ggml's Q8_0 blocks: 34 bytes per 32 values, about half of f16.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// ggml's Q4_0 blocks: 18 bytes per 32 values, about a quarter of f16.
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvCacheType {
    /// Every type, the default first.
    pub const ALL: [KvCacheType; 3] = [KvCacheType::F16, KvCacheType::Q8_0, KvCacheType::Q4_0];

    /// Its name, as llama.cpp's `-ctk` spells it (and JSON output prints it).
    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Q4_0 => "q4_0",
        }
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;

    /// Parses a type by name (any case); the error names the valid ones.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvCacheType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let valid: Vec<&str> = KvCacheType::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown KV cache type {s:?} (valid: {})", valid.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_types_parse_and_print_by_name() {
        for t in KvCacheType::ALL {
            assert_eq!(t.as_str().parse::<KvCacheType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!("Q4_0".parse::<KvCacheType>(), Ok(KvCacheType::Q4_0));
        assert_eq!(
            "q5_1".parse::<KvCacheType>(),
            Err("unknown KV cache type \"q5_1\" (valid: f16, q8_0, q4_0)".to_string())
        );
    }
}
