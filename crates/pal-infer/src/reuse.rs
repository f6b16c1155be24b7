//! Reusing the KV cache of a prompt for a later prompt that starts the same way: a chat's next
//! turn (`pal chat`), or another question about a clip a server has seen (`pal serve`'s audio
//! cache). The later prompt runs only the rows after the part the two share.
//!
//! With LAL every text row attends to the clip's audio keys, so a cached row is only valid for
//! the same clip: callers keep a prompt's cache with its clip, never across clips.

use candle_core::Tensor;
use pal_models::text::Segment;
use pal_models::{KvCache, Llama};

use crate::{InferError, Result};

/// What one position of a prompt holds: the clip (its in-sequence rows, however many), or a
/// text token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// The clip's place (PLITS or PAL summary rows; none for LAL alone).
    Audio,
    /// A text token.
    Token(u32),
}

/// The items of a prompt about `clips` clips, in order. A prompt without audio placeholders has
/// its clips' rows first, where the model puts them
/// ([`pal_models::audio_llm::AudioLlm::prepare`]): they are items too, or a kept prompt's rows
/// would be miscounted.
pub fn items(segments: &[Segment], clips: usize) -> Vec<Item> {
    let placed = segments.contains(&Segment::Audio);
    let first = if placed { 0 } else { clips };
    std::iter::repeat_n(Item::Audio, first)
        .chain(segments.iter().flat_map(|s| match s {
            Segment::Audio => vec![Item::Audio],
            Segment::Text { ids, .. } => ids.iter().map(|&t| Item::Token(t)).collect(),
        }))
        .collect()
}

/// The KV cache of a prompt about one clip (batch 1), with the items fed into it.
#[derive(Clone, Debug)]
pub struct PromptCache {
    /// The cache: the clip's LAL keys/values in front, then one row per text token and the
    /// clip's in-sequence rows.
    pub cache: KvCache,
    /// What was fed, in order.
    pub fed: Vec<Item>,
    /// Rows the clip's [`Item::Audio`] took.
    pub audio_rows: usize,
}

impl PromptCache {
    /// The cache of a prompt just run: `cache` holds exactly the rows of `fed`.
    pub fn new(cache: KvCache, fed: Vec<Item>) -> Self {
        let tokens = fed.iter().filter(|i| **i != Item::Audio).count();
        let audio_rows = cache.len().saturating_sub(tokens);
        Self {
            cache,
            fed,
            audio_rows,
        }
    }

    /// Cached rows of the first `n` items.
    fn rows(&self, n: usize) -> usize {
        self.fed[..n]
            .iter()
            .map(|i| match i {
                Item::Audio => self.audio_rows,
                Item::Token(_) => 1,
            })
            .sum()
    }

    /// How many leading items of `wanted` this cache holds, when it can serve it: the part
    /// the two share, which must hold the clip (a clip's rows cannot be cut, and a prompt that
    /// brings a clip after the shared part needs the encoder outputs). `None` when nothing
    /// can be kept.
    pub fn shared_items(&self, wanted: &[Item]) -> Option<usize> {
        let common = self
            .fed
            .iter()
            .zip(wanted)
            .take_while(|(a, b)| a == b)
            .count();
        let clip_kept = !self.fed[common..].contains(&Item::Audio);
        let no_new_clip = !wanted[common..].contains(&Item::Audio);
        (common > 0 && clip_kept && no_new_clip).then_some(common)
    }

    /// Keeps the first `keep` items (from [`Self::shared_items`], less than `wanted.len()`)
    /// and runs the rest of `wanted` (text tokens) through the LLM: returns the cache of
    /// `wanted` and the hidden states of the rows run.
    pub fn extend(mut self, llm: &Llama, wanted: &[Item], keep: usize) -> Result<(Self, Tensor)> {
        if keep >= wanted.len() || self.fed[..keep] != wanted[..keep] {
            return Err(InferError::Invalid(format!(
                "a cached prompt of {} items cannot extend to {} keeping {keep}",
                self.fed.len(),
                wanted.len()
            )));
        }
        let rows = self.rows(keep);
        self.cache.truncate(rows)?;
        let ids = wanted[keep..]
            .iter()
            .map(|i| match i {
                Item::Token(t) => Ok(*t),
                Item::Audio => Err(InferError::Invalid(
                    "a clip after the reused part needs its encoder outputs".into(),
                )),
            })
            .collect::<Result<Vec<u32>>>()?;
        let ids = Tensor::new(ids.as_slice(), llm.device())?.unsqueeze(0)?;
        let hidden = llm.forward_embeds(&llm.embed(&ids)?, None, &mut self.cache)?;
        self.fed = wanted.to_vec();
        Ok((self, hidden))
    }

    /// Bytes of the rows it holds (its clip's LAL keys/values not counted: they are the clip's,
    /// shared).
    pub fn bytes(&self) -> usize {
        self.cache
            .layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_of(fed: &[Item]) -> PromptCache {
        PromptCache {
            cache: KvCache::new(0),
            fed: fed.to_vec(),
            audio_rows: 16,
        }
    }

    #[test]
    fn the_shared_part_must_hold_the_clip() {
        use Item::{Audio, Token};
        let asked = cache_of(&[Token(1), Audio, Token(2), Token(3)]);
        // Another question about the clip: everything up to the question is kept.
        assert_eq!(
            asked.shared_items(&[Token(1), Audio, Token(4), Token(5)]),
            Some(2)
        );
        assert_eq!(asked.rows(2), 17);
        // The same prompt: all of it.
        assert_eq!(
            asked.shared_items(&[Token(1), Audio, Token(2), Token(3)]),
            Some(4)
        );
        // Parting before the clip: its rows would be cut, and the clip is needed again.
        assert_eq!(asked.shared_items(&[Token(1), Token(9), Audio]), None);
        assert_eq!(asked.shared_items(&[Token(7)]), None);
    }

    #[test]
    fn a_prompt_without_placeholder_has_its_clip_first() {
        let text = |ids: &[u32]| Segment::Text {
            ids: ids.to_vec(),
            trained: false,
        };
        assert_eq!(
            items(&[text(&[1, 2])], 1),
            vec![Item::Audio, Item::Token(1), Item::Token(2)]
        );
        assert_eq!(
            items(&[text(&[1]), Segment::Audio, text(&[2])], 1),
            vec![Item::Token(1), Item::Audio, Item::Token(2)]
        );
    }
}
