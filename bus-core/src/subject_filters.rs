//! Subject filters a consumer asks JetStream for. JetStream refuses a consumer whose
//! filters overlap, so a set of filters is first made minimal: a filter that another
//! covers (`bus.evt.shop.order.created` under `bus.evt.shop.>`) is dropped; filters that
//! still overlap without one covering the other (`a.*.c` and `a.b.*`) are replaced by
//! one filter for everything, and the dispatch picks.

/// The smallest set of `filters` that takes the same subjects, sorted; `everything` when
/// two of them overlap in part.
pub fn minimal(mut filters: Vec<String>, everything: &str) -> Vec<String> {
    filters.sort();
    filters.dedup();
    let kept: Vec<String> = filters
        .iter()
        .filter(|f| !filters.iter().any(|g| g != *f && covers(g, f)))
        .cloned()
        .collect();
    let overlapping = kept
        .iter()
        .enumerate()
        .any(|(i, a)| kept[i + 1..].iter().any(|b| overlaps(a, b)));
    if overlapping {
        vec![everything.to_owned()]
    } else {
        kept
    }
}

/// Whether every subject that `inner` takes is also taken by `outer` (NATS wildcards:
/// `*` one token, `>` one or more at the end).
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut inner_tokens = inner.split('.');
    for o in outer.split('.') {
        let Some(i) = inner_tokens.next() else {
            return false;
        };
        match (o, i) {
            (">", _) => return true,
            (_, ">") => return false,
            ("*", _) => {}
            (o, "*") if o != "*" => return false,
            (o, i) if o == i => {}
            _ => return false,
        }
    }
    inner_tokens.next().is_none()
}

/// Whether some subject is taken by both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut a_tokens = a.split('.');
    let mut b_tokens = b.split('.');
    loop {
        match (a_tokens.next(), b_tokens.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_follows_nats_wildcards() {
        for (outer, inner, expected) in [
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("a.>", "a.*", true),
            ("a.*", "a.>", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.b", "a.*", false),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            (">", "x.y", true),
            ("a.*.c", "a.b.c", true),
        ] {
            assert_eq!(covers(outer, inner), expected, "{outer} covers {inner}");
        }
    }

    #[test]
    fn overlaps_when_some_subject_matches_both() {
        for (a, b, expected) in [
            ("a.*.c", "a.b.*", true),
            ("a.b", "a.c", false),
            ("a.>", "b.>", false),
            ("a.>", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a", "a.>", false),
        ] {
            assert_eq!(overlaps(a, b), expected, "{a} overlaps {b}");
            assert_eq!(overlaps(b, a), expected, "{b} overlaps {a}");
        }
    }

    #[test]
    fn minimal_drops_covered_filters_and_falls_back_on_partial_overlap() {
        let all = "bus.evt.>";
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            minimal(s(&["bus.evt.a.b", "bus.evt.a.>", "bus.redrive.g.>"]), all),
            s(&["bus.evt.a.>", "bus.redrive.g.>"])
        );
        assert_eq!(
            minimal(s(&["bus.evt.b", "bus.evt.a", "bus.evt.b"]), all),
            s(&["bus.evt.a", "bus.evt.b"])
        );
        assert_eq!(
            minimal(s(&["bus.evt.a.*.c", "bus.evt.a.b.*"]), all),
            s(&[all])
        );
    }
}
