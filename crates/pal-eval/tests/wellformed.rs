//! The well-formedness judgement on answers a user would call language or not (needs the word
//! list `/usr/share/dict/words`: Debian's `wamerican`, which CI installs).

use pal_eval::wellformed::{WordList, SYSTEM_WORD_LIST};

fn words() -> WordList {
    WordList::load_or_system(None).unwrap_or_else(|e| {
        panic!(
            "these tests need a word list at {SYSTEM_WORD_LIST} (apt-get install wamerican): {e}"
        )
    })
}

#[test]
fn sentences_and_short_answers_are_language() {
    let w = words();
    for answer in [
        "seven",
        "7",
        "A dog is barking.",
        "It's someone speaking about their country.",
        "The sound is a rooster crowing, then rain.",
        "Paris",
        "Hello! How are you today?",
        "white noise",
        "I can't tell: it's a quiet, steady hiss - maybe a fan.",
    ] {
        assert!(
            w.is_well_formed(answer, true),
            "{answer:?} should be well-formed"
        );
    }
}

#[test]
fn token_soup_and_unfinished_answers_are_not() {
    let w = words();
    // What the shipped adapter said about the JFK clip before gated LAL.
    let soup = "shareAGallingield affili\u{fffd}mountALSardmititudeacheritude anticip affiliiconiosync affili\u{fffd} encou\u{fffd} affili heaviestme borrowasy";
    for answer in [
        soup,
        "')(+'. **')( IGH compare",
        "",
        "   ",
        "affili affili affili dog",
    ] {
        assert!(
            !w.is_well_formed(answer, true),
            "{answer:?} should not be well-formed"
        );
    }
    // Language that ran into max_tokens did not end by itself.
    assert!(!w.is_well_formed("The sound is a dog barking and", false));
}

#[test]
fn the_word_share_counts_noise_pieces() {
    let w = words();
    let (share, n) = w.word_share("a dog xqzt barks");
    assert_eq!(n, 4);
    assert!((share - 0.75).abs() < 1e-12);
    // Nine words and one stray piece: exactly at the 90% line, still language.
    assert!(w.is_well_formed("one two three four five six seven eight nine zzxq", true));
}

#[test]
fn a_missing_word_list_names_the_file() {
    let e = WordList::load(std::path::Path::new("no/such/words")).unwrap_err();
    assert!(e.to_string().contains("no/such/words"), "{e}");
}
