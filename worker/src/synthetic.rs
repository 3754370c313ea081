//! Synthetic keystroke-like timings for the fleet benchmarks (seeded; generated, not committed):
//! each user with their own mean (0.05–0.40 s) and spread (0.01–0.08 s) per feature, genuine
//! rows drawn from the user's own distribution, impostor rows from another user's.

/// Timing features per row, as in CMU's keystroke benchmark.
pub const FEATURES: usize = 31;

/// splitmix64: a seeded generator with no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// A user in `0..n`, uniformly.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Each user's timing distribution.
pub struct Users {
    pub count: usize,
    mean: Vec<f64>,
    spread: Vec<f64>,
}

impl Users {
    pub fn new(count: usize, rng: &mut Rng) -> Self {
        let mean = (0..count * FEATURES)
            .map(|_| 0.05 + 0.35 * rng.uniform())
            .collect();
        let spread = (0..count * FEATURES)
            .map(|_| 0.01 + 0.07 * rng.uniform())
            .collect();
        Self {
            count,
            mean,
            spread,
        }
    }

    /// Appends one row typed by `user` to `out`.
    pub fn row(&self, user: usize, rng: &mut Rng, out: &mut Vec<f32>) {
        for f in 0..FEATURES {
            let i = user * FEATURES + f;
            out.push((self.mean[i] + self.spread[i] * rng.normal()).max(0.001) as f32);
        }
    }
}

/// Draws ranks `0..n` with probability ∝ 1/(rank+1)^s (Zipf), by inverting the cumulative sum.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let target = rng.uniform() * self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|&c| c < target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let z = Zipf::new(1000, 1.1);
        let mut rng = Rng(7);
        let draws: Vec<usize> = (0..20_000).map(|_| z.sample(&mut rng)).collect();
        assert!(draws.iter().all(|&d| d < 1000));
        let first = draws.iter().filter(|&&d| d == 0).count();
        let hundredth = draws.iter().filter(|&&d| d == 99).count();
        assert!(first > 20 * hundredth.max(1), "{first} vs {hundredth}");
    }
}
