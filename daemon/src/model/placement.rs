//! Assigning layers to devices by split weights, with llama.cpp's rule (`--tensor-split`): the
//! cumulative split fractions cut the sequence of `n_layer + 1` layers (the output layer counts
//! as layer `n_layer`), so users moving from llama.cpp get the same placement.

use std::ops::Range;

/// The device index that layer `il` goes to, given normalised cumulative split fractions.
fn device_of(il: usize, n_layer: usize, cumulative: &[f64]) -> usize {
    let x = il as f64 / (n_layer + 1) as f64;
    // llama.cpp: std::upper_bound(splits, x) - splits.begin(): the first fraction greater than x.
    cumulative
        .iter()
        .position(|&c| c > x)
        .unwrap_or(cumulative.len() - 1)
}

/// Layer ranges per device (possibly empty) for `n_layer` layers split by `weights`, and the
/// device that gets the output layer. `weights` must be non-empty, finite, non-negative and not
/// all zero (callers validate; an invalid split puts everything on the first device).
pub fn assign_layers(n_layer: usize, weights: &[f64]) -> (Vec<Range<usize>>, usize) {
    let n = weights.len().max(1);
    let total: f64 = weights.iter().sum();
    let valid = total > 0.0 && weights.iter().all(|w| w.is_finite() && *w >= 0.0);
    let cumulative: Vec<f64> = if valid {
        weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w;
                Some(*acc / total)
            })
            .collect()
    } else {
        vec![1.0; n]
    };
    let mut ranges = vec![0..0; n];
    let mut start_of = vec![None::<usize>; n];
    for il in 0..n_layer {
        let dev = device_of(il, n_layer, &cumulative);
        let s = *start_of[dev].get_or_insert(il);
        ranges[dev] = s..il + 1;
    }
    // Devices without layers get an empty range at the right place so ranges stay ordered.
    let mut next = 0;
    for r in ranges.iter_mut() {
        if r.start >= r.end {
            *r = next..next;
        }
        next = r.end;
    }
    (ranges, device_of(n_layer, n_layer, &cumulative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_matches_llama_cpp() {
        // 18 layers + output over two devices: layer il goes to device 0 while il/19 < 0.5.
        let (r, out) = assign_layers(18, &[1.0, 1.0]);
        assert_eq!(r, vec![0..10, 10..18]);
        assert_eq!(out, 1);
    }

    #[test]
    fn uneven_and_three_way_splits() {
        let (r, out) = assign_layers(18, &[3.0, 1.0]);
        assert_eq!(r, vec![0..15, 15..18]);
        assert_eq!(out, 1);
        let (r, out) = assign_layers(80, &[1.0, 1.0, 1.0]);
        assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), 80);
        assert_eq!(r[0], 0..27);
        assert_eq!(out, 2);
    }

    #[test]
    fn zero_weight_device_gets_no_layers() {
        let (r, out) = assign_layers(10, &[1.0, 0.0]);
        assert_eq!(r, vec![0..10, 10..10]);
        assert_eq!(out, 0);
    }
}
