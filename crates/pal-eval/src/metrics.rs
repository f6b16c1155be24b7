//! Scoring of closed answers: normalised exact match, or a label-set match (the answer names
//! exactly one label of the task, and it is the reference).

/// Lowercase, punctuation removed, whitespace collapsed.
pub fn normalize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `needle` (normalised) occurs in `haystack` (normalised) as whole words.
fn contains_words(haystack: &str, needle: &str) -> bool {
    format!(" {haystack} ").contains(&format!(" {needle} "))
}

/// Is `answer` correct for `reference`, given the task's `labels` (all references of the task)?
/// Correct when the normalised answer equals the normalised reference, or when among the labels
/// the answer mentions exactly one, the reference.
pub fn closed_answer_correct(answer: &str, reference: &str, labels: &[String]) -> bool {
    let (a, r) = (normalize(answer), normalize(reference));
    if a == r {
        return true;
    }
    let mentioned: Vec<String> = labels
        .iter()
        .map(|l| normalize(l))
        .filter(|l| !l.is_empty() && contains_words(&a, l))
        .collect();
    // A label that is part of a longer mentioned label ("dog" in "hot dog") does not count twice.
    let distinct: Vec<&String> = mentioned
        .iter()
        .filter(|l| !mentioned.iter().any(|m| m != *l && contains_words(m, l)))
        .collect();
    distinct.len() == 1 && *distinct[0] == r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> Vec<String> {
        [
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn normalisation_and_label_matching() {
        assert_eq!(normalize("  The Digit is: SEVEN! "), "the digit is seven");
        assert!(closed_answer_correct("Seven.", "seven", &digits()));
        assert!(closed_answer_correct(
            "The digit spoken is seven.",
            "seven",
            &digits()
        ));
        assert!(!closed_answer_correct("seven or eight", "seven", &digits()));
        assert!(!closed_answer_correct("eleven", "seven", &digits()));
        assert!(!closed_answer_correct("sevenish", "seven", &digits()));
        let sounds: Vec<String> = ["dog", "sea waves", "rain"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(closed_answer_correct(
            "Sea waves crashing",
            "sea waves",
            &sounds
        ));
        assert!(!closed_answer_correct("a dog in the rain", "dog", &sounds));
    }
}
