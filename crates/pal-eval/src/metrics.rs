//! Scoring of closed answers: normalised exact match, or a label-set match (the answer names
//! exactly one label of the task, and it is the reference); of times, within a stated tolerance;
//! of transcripts and captions, WER, BLEU-4 and CIDEr-D.

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

/// How far a time answer may be from its reference and still be right, seconds (as wide as an
/// ESC-10 clip's half: the time an event is "first heard" is a judgement within its clip).
pub const TIME_TOLERANCE_SECONDS: f64 = 2.0;

/// Seconds per unit word, or `None` for a word that is not a unit of time.
fn unit_seconds(word: &str) -> Option<f64> {
    match word {
        "s" | "sec" | "secs" | "second" | "seconds" => Some(1.0),
        "m" | "min" | "mins" | "minute" | "minutes" => Some(60.0),
        "h" | "hr" | "hrs" | "hour" | "hours" => Some(3600.0),
        _ => None,
    }
}

/// The time `text` names, in seconds: its first run of numbers with units ("at 72 seconds",
/// "1 minute 12 seconds", "72s", "1 min and 12 s"), a clock time ("1:12", "1:01:12"), or, where
/// the text holds one number and no unit, that number as seconds. Numbers in digits only.
pub fn seconds_named(text: &str) -> Option<f64> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '.' && c != ':'))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.is_empty())
        .collect();
    let number = |w: &str| -> Option<f64> {
        (w.starts_with(|c: char| c.is_ascii_digit()) && !w.ends_with('.'))
            .then(|| w.parse::<f64>().ok())
            .flatten()
    };
    let mut total: Option<f64> = None;
    let mut bare = vec![];
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.contains(':') && total.is_none() {
            let parts: Option<Vec<f64>> = w.split(':').map(number).collect();
            if let Some(parts) = parts.filter(|p| (2..=3).contains(&p.len())) {
                return Some(parts.iter().fold(0.0, |t, p| 60.0 * t + p));
            }
        }
        // "72s": the number and its unit in one word.
        let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let (n, unit, used) = match (number(digits), &w[digits.len()..]) {
            (Some(n), "") => (Some(n), words.get(i + 1).and_then(|u| unit_seconds(u)), 2),
            (Some(n), suffix) => (Some(n), unit_seconds(suffix), 1),
            (None, _) => (None, None, 1),
        };
        match (n, unit) {
            (Some(n), Some(scale)) => {
                total = Some(total.unwrap_or(0.0) + n * scale);
                i += used;
                continue;
            }
            (Some(n), None) if total.is_none() => bare.push(n),
            _ if total.is_some() && w != "and" => break,
            _ => {}
        }
        i += 1;
    }
    total.or_else(|| (bare.len() == 1).then(|| bare[0]))
}

/// Whether `reference` is a time answer: it names a time in seconds ("at 42 seconds").
pub fn is_time_reference(reference: &str) -> bool {
    let lower = reference.to_lowercase();
    (lower.contains("second") || lower.contains("minute")) && seconds_named(reference).is_some()
}

/// Whether `answer` names a time within [`TIME_TOLERANCE_SECONDS`] of the one `reference` names.
pub fn time_answer_correct(answer: &str, reference: &str) -> bool {
    match (seconds_named(answer), seconds_named(reference)) {
        (Some(a), Some(r)) => (a - r).abs() <= TIME_TOLERANCE_SECONDS + 1e-9,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_the_forms_answers_take() {
        let cases = [
            ("at 42 seconds", Some(42.0)),
            ("At 42 seconds.", Some(42.0)),
            ("42s", Some(42.0)),
            ("after 1 minute 12 seconds", Some(72.0)),
            ("1 min and 12 s", Some(72.0)),
            ("at 1:12", Some(72.0)),
            ("1:01:12", Some(3672.0)),
            ("42", Some(42.0)),
            ("at 7.5 seconds", Some(7.5)),
            ("at 42 seconds, then at 50 seconds", Some(42.0)),
            ("between 40 and 50", None),
            ("a dog barks", None),
            ("at forty seconds", None),
        ];
        for (text, want) in cases {
            assert_eq!(seconds_named(text), want, "{text}");
        }
        assert!(is_time_reference("at 42 seconds"));
        assert!(!is_time_reference("seven"));
        assert!(!is_time_reference("3"));
        assert!(time_answer_correct("at 44 seconds", "at 42 seconds"));
        assert!(time_answer_correct("at 40 seconds", "at 42 seconds"));
        assert!(!time_answer_correct("at 45 seconds", "at 42 seconds"));
        assert!(!time_answer_correct("a dog", "at 42 seconds"));
    }

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

/// Whisper's basic English text normalisation (as `BasicTextNormalizer`): lowercase, text in
/// brackets or parentheses removed, punctuation and symbols replaced by spaces (apostrophes
/// kept inside words), whitespace collapsed; plus the hesitation words Whisper's English
/// normaliser drops (um, uh, hmm, mm, ah, eh).
pub fn whisper_normalize(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '[' | '(' | '<' => depth += 1,
            ']' | ')' | '>' => depth = (depth - 1).max(0),
            _ if depth > 0 => {}
            c if c.is_alphanumeric() || c == '\'' => out.extend(c.to_lowercase()),
            _ => out.push(' '),
        }
    }
    const FILLERS: &[&str] = &["um", "uh", "hmm", "mm", "ah", "eh", "mhm"];
    out.split_whitespace()
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty() && !FILLERS.contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Word-level edit distance (substitutions + deletions + insertions) between two word lists.
pub fn word_edits(reference: &[&str], hypothesis: &[&str]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut cur = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[hypothesis.len()]
}

/// Corpus word error rate over `(reference, hypothesis)` pairs, after [`whisper_normalize`]:
/// total edits over total reference words.
pub fn word_error_rate(pairs: &[(&str, &str)]) -> f64 {
    let (mut edits, mut words) = (0usize, 0usize);
    for (r, h) in pairs {
        let (r, h) = (whisper_normalize(r), whisper_normalize(h));
        let rw: Vec<&str> = r.split_whitespace().collect();
        let hw: Vec<&str> = h.split_whitespace().collect();
        edits += word_edits(&rw, &hw);
        words += rw.len();
    }
    edits as f64 / words.max(1) as f64
}

fn ngrams(words: &[&str], n: usize) -> std::collections::HashMap<Vec<String>, usize> {
    let mut counts = std::collections::HashMap::new();
    if words.len() >= n {
        for w in words.windows(n) {
            *counts
                .entry(w.iter().map(|s| s.to_string()).collect())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions for n = 1..4 with uniform
/// weights, brevity penalty against the closest reference length; texts are lowercased and
/// split on whitespace after [`normalize`]. Each item has one hypothesis and one or more
/// references. An order with no match is smoothed as sacrebleu's default (`exp`): the k-th
/// such order counts `1 / (2^k * total)`. Returns a value in [0, 1].
pub fn bleu4(items: &[(&str, Vec<&str>)]) -> f64 {
    let mut matches = [0usize; 4];
    let mut totals = [0usize; 4];
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for (hyp, refs) in items {
        let h = normalize(hyp);
        let hw: Vec<&str> = h.split_whitespace().collect();
        let rs: Vec<String> = refs.iter().map(|r| normalize(r)).collect();
        let rws: Vec<Vec<&str>> = rs.iter().map(|r| r.split_whitespace().collect()).collect();
        hyp_len += hw.len();
        // Closest reference length (ties: the shorter).
        ref_len += rws
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| ((l as i64 - hw.len() as i64).abs(), l))
            .unwrap_or(0);
        for n in 1..=4 {
            let hc = ngrams(&hw, n);
            let mut max_ref: std::collections::HashMap<Vec<String>, usize> =
                std::collections::HashMap::new();
            for r in &rws {
                for (g, c) in ngrams(r, n) {
                    let e = max_ref.entry(g).or_insert(0);
                    *e = (*e).max(c);
                }
            }
            matches[n - 1] += hc
                .iter()
                .map(|(g, c)| (*c).min(*max_ref.get(g).unwrap_or(&0)))
                .sum::<usize>();
            totals[n - 1] += hw.len().saturating_sub(n - 1);
        }
    }
    if hyp_len == 0 || totals.contains(&0) {
        return 0.0;
    }
    let mut smooth = 1.0;
    let log_precision: f64 = (0..4)
        .map(|i| {
            if matches[i] == 0 {
                smooth *= 2.0;
                (1.0 / (smooth * totals[i] as f64)).ln()
            } else {
                (matches[i] as f64 / totals[i] as f64).ln()
            }
        })
        .sum::<f64>()
        / 4.0;
    let bp = if hyp_len > ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    bp * log_precision.exp()
}

/// CIDEr-D (Vedantam et al.) as the coco-caption reference implementation computes it:
/// TF-IDF weighted n-grams (n = 1..4) with document frequencies over each item's references,
/// hypothesis counts clipped by the reference's, a Gaussian length penalty (sigma 6, on the
/// bigram count as in the reference code), averaged over references and n, times 10. Texts
/// are [`normalize`]d. Returns the corpus mean and the per-item scores.
pub fn cider_d(items: &[(&str, Vec<&str>)]) -> (f64, Vec<f64>) {
    type Counts = std::collections::HashMap<Vec<String>, usize>;
    let cook = |text: &str| -> Counts {
        let t = normalize(text);
        let words: Vec<&str> = t.split_whitespace().collect();
        let mut all = Counts::new();
        for n in 1..=4 {
            all.extend(ngrams(&words, n));
        }
        all
    };
    let hyps: Vec<Counts> = items.iter().map(|(h, _)| cook(h)).collect();
    let refs: Vec<Vec<Counts>> = items
        .iter()
        .map(|(_, rs)| rs.iter().map(|r| cook(r)).collect())
        .collect();
    let mut df: std::collections::HashMap<Vec<String>, f64> = std::collections::HashMap::new();
    for rs in &refs {
        let distinct: std::collections::HashSet<&Vec<String>> =
            rs.iter().flat_map(|r| r.keys()).collect();
        for g in distinct {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (items.len() as f64).ln();
    let vectorize = |counts: &Counts| {
        let mut vec: Vec<std::collections::HashMap<Vec<String>, f64>> = vec![Default::default(); 4];
        let mut norm = [0.0f64; 4];
        let mut length = 0usize;
        for (g, &tf) in counts {
            let n = g.len() - 1;
            let w = tf as f64 * (ref_len - df.get(g).copied().unwrap_or(0.0).max(1.0).ln());
            vec[n].insert(g.clone(), w);
            norm[n] += w * w;
            if n == 1 {
                length += tf;
            }
        }
        (vec, norm.map(f64::sqrt), length)
    };
    let sigma = 6.0f64;
    let scores: Vec<f64> = hyps
        .iter()
        .zip(&refs)
        .map(|(h, rs)| {
            let (hv, hn, hl) = vectorize(h);
            let mut total = 0.0;
            for r in rs {
                let (rv, rn, rl) = vectorize(r);
                let delta = hl as f64 - rl as f64;
                for n in 0..4 {
                    let mut val: f64 = hv[n]
                        .iter()
                        .map(|(g, &w)| {
                            let wr = rv[n].get(g).copied().unwrap_or(0.0);
                            w.min(wr) * wr
                        })
                        .sum();
                    if hn[n] != 0.0 && rn[n] != 0.0 {
                        val /= hn[n] * rn[n];
                    }
                    total += val * (-(delta * delta) / (2.0 * sigma * sigma)).exp();
                }
            }
            total / 4.0 / rs.len().max(1) as f64 * 10.0
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    (mean, scores)
}

#[cfg(test)]
mod text_metric_tests {
    use super::*;

    #[test]
    fn whisper_normalisation() {
        assert_eq!(
            whisper_normalize(" And so, my fellow Americans [applause]: ask NOT!"),
            "and so my fellow americans ask not"
        );
        assert_eq!(
            whisper_normalize("Um, it's (inaudible) fine, uh."),
            "it's fine"
        );
    }

    #[test]
    fn wer_hand_computed() {
        // "the cat sat on the mat" vs "the cat sit on mat": 1 substitution + 1 deletion = 2/6.
        assert!(
            (word_error_rate(&[("The cat sat on the mat.", "the cat sit on mat")]) - 2.0 / 6.0)
                .abs()
                < 1e-12
        );
        // Corpus WER pools edits: (2 + 1) / (6 + 2).
        let pairs = [
            ("the cat sat on the mat", "the cat sit on mat"),
            ("hello world", "hello there world"),
        ];
        assert!((word_error_rate(&pairs) - 3.0 / 8.0).abs() < 1e-12);
        assert_eq!(word_error_rate(&[("Fail better.", "fail better")]), 0.0);
    }

    #[test]
    fn bleu_hand_computed() {
        // Identical: 1.
        assert!(
            (bleu4(&[("a dog runs in the park", vec!["a dog runs in the park"])]) - 1.0).abs()
                < 1e-12
        );
        // Words right, order wrong: p1 = 4/4, then 0/3, 0/2, 0/1 smoothed to 1/6, 1/8, 1/8;
        // 4 words against 6: BP = exp(1 - 6/4).
        let expected = (-0.5f64).exp() * (1.0f64 / 6.0 / 8.0 / 8.0).powf(0.25);
        assert!(
            (bleu4(&[("dog a park the", vec!["a dog runs in the park"])]) - expected).abs() < 1e-12
        );
        // hyp "the cat sat on the mat today" (7 words), ref "the cat sat on the mat" (6):
        // p1 = 6/7, p2 = 5/6, p3 = 4/5, p4 = 3/4, no brevity penalty.
        let expected = (6.0f64 / 7.0 * 5.0 / 6.0 * 4.0 / 5.0 * 3.0 / 4.0).powf(0.25);
        let got = bleu4(&[(
            "the cat sat on the mat today",
            vec!["the cat sat on the mat"],
        )]);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // Short hypothesis "the cat sat on the" (5) vs ref of 6: p = 1 each, BP = exp(1 - 6/5).
        let got = bleu4(&[("the cat sat on the", vec!["the cat sat on the mat"])]);
        assert!((got - (1.0f64 - 6.0 / 5.0).exp()).abs() < 1e-12);
        // Clipping: "the the the the" vs "the cat": p1 = 1/4 (clipped), then smoothed 1/6, 1/8, 1/8.
        let expected = (1.0f64 / 4.0 / 6.0 / 8.0 / 8.0).powf(0.25);
        assert!((bleu4(&[("the the the the", vec!["the cat"])]) - expected).abs() < 1e-12);
    }

    /// A three-item caption corpus, two references each. Reference values from the coco-caption
    /// implementations (pycocoevalcap 1.2 `CiderScorer(n=4, sigma=6)`, sacrebleu 2 `corpus_bleu`
    /// with `tokenize="none"`) on the same lowercased, punctuation-free text.
    fn captions() -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            (
                "a dog is running in the park",
                vec!["a dog runs in the park", "a brown dog is running on grass"],
            ),
            (
                "rain on the roof",
                vec!["rain falls on a roof", "heavy rain"],
            ),
            ("a bird sings", vec!["a clock ticks", "ticking of a clock"]),
        ]
    }

    #[test]
    fn cider_d_matches_the_coco_caption_implementation() {
        let (mean, scores) = cider_d(&captions());
        assert!((mean - 1.501_714_385_014_955_5).abs() < 1e-9, "{mean}");
        assert!(
            (scores[0] - 3.193_323_26).abs() < 1e-6
                && (scores[1] - 1.311_819_9).abs() < 1e-6
                && scores[2] == 0.0,
            "{scores:?}"
        );
    }

    #[test]
    fn bleu_matches_sacrebleu_on_a_corpus() {
        let got = bleu4(&captions());
        assert!((100.0 * got - 28.620_318_330_795_307).abs() < 1e-6, "{got}");
    }
}
