//! Well-formedness: whether an answer is language a reader would accept as such, right or
//! wrong. An answer is well-formed when it ended by itself (a stop token, not `max_tokens`), has
//! at least one word, and at least 90% of its words are English words: in a word list (Debian's
//! `wamerican`, `/usr/share/dict/words`, by default) or numbers. Words are the answer's
//! whitespace-separated pieces with surrounding punctuation removed; a piece with anything but
//! letters, digits, apostrophes and inner hyphens (a stray symbol, a broken UTF-8 byte) is not a
//! word. `pal eval` reports the share of well-formed answers beside accuracy.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The share of an answer's words that must be English words.
pub const MIN_WORD_SHARE: f64 = 0.9;

/// Where a word list is looked for when none is given.
pub const SYSTEM_WORD_LIST: &str = "/usr/share/dict/words";

/// A set of English words, lower-case.
#[derive(Debug, Clone)]
pub struct WordList {
    words: HashSet<String>,
    /// The file it was read from.
    pub path: PathBuf,
}

impl WordList {
    /// Reads a word list: one word per line (as `wamerican` writes it).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the word list {}: {e}", path.display()))?;
        let words: HashSet<String> = text
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect();
        if words.len() < 1000 {
            anyhow::bail!(
                "the word list {} has only {} words; a dictionary such as Debian's wamerican \
                 (/usr/share/dict/words) is expected",
                path.display(),
                words.len()
            );
        }
        Ok(Self {
            words,
            path: path.to_path_buf(),
        })
    }

    /// The list at `path`, or the system's (`/usr/share/dict/words`) when `path` is `None`.
    pub fn load_or_system(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(SYSTEM_WORD_LIST).exists() => Self::load(Path::new(SYSTEM_WORD_LIST)),
            None => anyhow::bail!(
                "no word list at {SYSTEM_WORD_LIST}: install one (Debian: apt-get install \
                 wamerican) or pass --words FILE"
            ),
        }
    }

    /// Whether `word` (already lower-case, punctuation stripped) is English: in the list, a
    /// number, or a possessive / contraction of a word in the list.
    fn knows(&self, word: &str) -> bool {
        if word
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        {
            return word.chars().any(|c| c.is_ascii_digit());
        }
        if self.words.contains(word) {
            return true;
        }
        for suffix in ["'s", "'", "n't", "'re", "'ll", "'ve", "'d", "'m"] {
            if let Some(stem) = word.strip_suffix(suffix) {
                if !stem.is_empty() && self.words.contains(stem) {
                    return true;
                }
            }
        }
        // Hyphenated compounds: every part a word.
        word.contains('-') && word.split('-').all(|p| !p.is_empty() && self.knows(p))
    }

    /// The share of `text`'s words that are English, and the number of words.
    pub fn word_share(&self, text: &str) -> (f64, usize) {
        let mut known = 0;
        let mut total = 0;
        for piece in text.split_whitespace() {
            let word = piece
                .trim_matches(|c: char| c.is_ascii_punctuation())
                .to_lowercase()
                .replace('\u{2019}', "'");
            if word.is_empty() {
                // Punctuation alone (a dash, an ellipsis) is neither word nor noise...
                if piece.chars().all(|c| c.is_ascii_punctuation()) && piece.len() <= 3 {
                    continue;
                }
                // ...but a run of symbols is noise.
                total += 1;
                continue;
            }
            total += 1;
            let clean = word.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '\'' || c == '-' || c == '.' || c == ','
            });
            if clean && self.knows(&word) {
                known += 1;
            }
        }
        match total {
            0 => (0.0, 0),
            n => (known as f64 / n as f64, n),
        }
    }

    /// Whether an answer is well-formed (see the module docs); `ended_by_itself` is false when
    /// generation stopped at `max_tokens`.
    pub fn is_well_formed(&self, text: &str, ended_by_itself: bool) -> bool {
        let (share, words) = self.word_share(text);
        ended_by_itself && words > 0 && share >= MIN_WORD_SHARE
    }
}
