//! Medians and the interleaved schedule every comparison uses.

/// Median of the values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Runs `measure` on each variant in turn, `rounds` times (A,B,C,A,B,C…), so
/// a burst of load from elsewhere on the machine hits every variant alike.
pub fn interleaved<V, F>(
    variants: &[V],
    rounds: usize,
    mut measure: F,
) -> Result<Vec<Vec<f64>>, String>
where
    F: FnMut(&V) -> Result<f64, String>,
{
    let mut results = vec![Vec::with_capacity(rounds); variants.len()];
    for _ in 0..rounds {
        for (variant, result) in variants.iter().zip(results.iter_mut()) {
            result.push(measure(variant)?);
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
