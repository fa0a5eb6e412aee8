use pio_gpu::reference;
use pio_gpu::{DeviceSampler, Gpu, GpuBuffer, SampleSettings};
use rand::Rng;

use crate::common;

const ALL: SampleSettings = SampleSettings {
    greedy: false,
    temperature: 1.0,
    top_k: 0,
    top_p: 1.0,
    min_p: 0.0,
    repetition_penalty: 1.0,
    uniform: 0.0,
};

/// Runs the sampler on `logits` (uploaded afresh: the kernel penalizes in place).
fn run(
    gpu: &Gpu,
    sampler: &DeviceSampler,
    buffer: &GpuBuffer,
    logits: &[f32],
    settings: &SampleSettings,
    penalty_ids: &[u32],
) -> Option<u32> {
    gpu.write(buffer, 0, logits).unwrap();
    sampler.set(gpu, settings, penalty_ids).unwrap();
    let dispatch = sampler.bind(gpu, buffer).unwrap();
    gpu.run(&[&dispatch]).unwrap();
    sampler.token(gpu.read_u32(sampler.result()).unwrap()[0])
}

#[test]
fn greedy_takes_the_penalized_maximum() {
    let gpu = common::gpu();
    let vocab = 49152;
    let mut rng = common::rng(11);
    let logits = common::random_f32(&mut rng, vocab, 8.0);
    let sampler = DeviceSampler::new(&gpu, vocab as u32).unwrap();
    let buffer = gpu.storage_zeroed("logits", vocab as u64 * 4).unwrap();
    let greedy = SampleSettings {
        greedy: true,
        repetition_penalty: 1.5,
        ..ALL
    };
    let best = reference::sample_distribution(&logits, &greedy, &[])[0].0;
    assert_eq!(
        run(&gpu, &sampler, &buffer, &logits, &greedy, &[]),
        Some(best)
    );
    // Penalizing the best few moves the choice down the ranking.
    let mut penalized = vec![best];
    for _ in 0..5 {
        let want = reference::sample_distribution(&logits, &greedy, &penalized)[0].0;
        let got = run(&gpu, &sampler, &buffer, &logits, &greedy, &penalized);
        assert_eq!(got, Some(want), "penalized {penalized:?}");
        penalized.push(want);
        penalized.sort_unstable();
    }
    // The lowest id wins a tie.
    let mut tied = logits.clone();
    tied[7] = 100.0;
    tied[40000] = 100.0;
    assert_eq!(run(&gpu, &sampler, &buffer, &tied, &greedy, &[]), Some(7));
}

/// The token the inverse CDF (in id order) of `dist` gives for `u`, unless `u` is within
/// `margin` of a step, where f32 rounding on the device may land on either side.
fn inverse_cdf(dist: &[(u32, f64)], u: f64, margin: f64) -> Option<u32> {
    let mut cum = 0.0;
    for &(id, p) in dist {
        cum += p;
        if (u - cum).abs() < margin {
            return None;
        }
        if u < cum {
            return Some(id);
        }
    }
    dist.last().map(|d| d.0)
}

#[test]
fn draws_follow_the_inverse_cdf_of_the_kept_set() {
    let gpu = common::gpu();
    let vocab = 3000;
    let mut rng = common::rng(12);
    let logits = common::random_f32(&mut rng, vocab, 6.0);
    let penalty: Vec<u32> = {
        let mut ids: Vec<u32> = (0..40).map(|_| rng.random_range(0..vocab as u32)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let sampler = DeviceSampler::new(&gpu, vocab as u32).unwrap();
    let buffer = gpu.storage_zeroed("logits", vocab as u64 * 4).unwrap();
    let cases = [
        (ALL, vec![]),
        (
            SampleSettings {
                temperature: 0.7,
                top_k: 20,
                ..ALL
            },
            vec![],
        ),
        (
            SampleSettings {
                temperature: 1.3,
                top_p: 0.8,
                ..ALL
            },
            vec![],
        ),
        (SampleSettings { min_p: 0.05, ..ALL }, vec![]),
        (
            SampleSettings {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.02,
                repetition_penalty: 1.3,
                ..ALL
            },
            penalty.clone(),
        ),
    ];
    for (settings, ids) in &cases {
        let dist = reference::sample_distribution(&logits, settings, ids);
        let kept: Vec<u32> = dist.iter().map(|d| d.0).collect();
        let mut checked = 0;
        for i in 0..64 {
            let u = (f64::from(i) + 0.5) / 64.0;
            let draw = SampleSettings {
                uniform: u as f32,
                ..*settings
            };
            let got = run(&gpu, &sampler, &buffer, &logits, &draw, ids).unwrap();
            assert!(
                kept.contains(&got),
                "{settings:?}: token {got} is not in the kept set"
            );
            if let Some(want) = inverse_cdf(&dist, u, 1e-5) {
                assert_eq!(got, want, "{settings:?} u={u}");
                checked += 1;
            }
        }
        println!(
            "sample {settings:?}: {} tokens kept, {checked} of 64 draws matched exactly",
            kept.len()
        );
        assert!(checked >= 60, "too many draws near a step: {checked}");
    }
}

#[test]
fn non_finite_logits_give_no_token() {
    let gpu = common::gpu();
    let sampler = DeviceSampler::new(&gpu, 100).unwrap();
    let buffer = gpu.storage_zeroed("logits", 400).unwrap();
    let mut logits = vec![0.5f32; 100];
    logits[42] = f32::NAN;
    assert_eq!(run(&gpu, &sampler, &buffer, &logits, &ALL, &[]), None);
    logits[42] = f32::INFINITY;
    let greedy = SampleSettings {
        greedy: true,
        ..ALL
    };
    assert_eq!(run(&gpu, &sampler, &buffer, &logits, &greedy, &[]), None);
    let too_many = vec![0u32; pio_gpu::MAX_PENALTY_TOKENS + 1];
    assert!(sampler.set(&gpu, &ALL, &too_many).is_err());
    let cold = SampleSettings {
        temperature: 0.0,
        ..ALL
    };
    assert!(sampler.set(&gpu, &cold, &[]).is_err());
}
