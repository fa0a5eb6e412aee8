// Picks the next token from one row of logits on the device, so only its id is read back.
// One workgroup of WG invocations; invocation i owns the contiguous chunk i of the vocabulary,
// and partial results are combined in chunk order, so every sum (and the draw) is deterministic.
//
// 1. Repetition penalty, in place (llama.cpp's rule): logit / penalty if positive, else
//    * penalty, for the distinct ids in `penalty_ids`.
// 2. Greedy: the largest logit (the lowest id on ties) and done.
// 3. Otherwise the kept set is {i : logit_i >= tau}, tau the largest of
//    - top-k: the k-th largest logit (bisection on the value: the largest tau with at least k
//      logits >= tau);
//    - top-p: the largest tau >= tau_k whose set holds at least top_p of the untempered softmax
//      mass of the top-k set (bisection);
//    - min-p: max + ln(min_p) (probability at least min_p times the most likely token's);
//    and the token is drawn from the temperature-scaled softmax over the kept set, walking the
//    vocabulary in id order until the running mass passes u * total (u uniform in [0, 1),
//    supplied by the host's seeded generator).
// A NaN or infinite logit makes the result NOT_FINITE instead.
// Logits within a bisection step (range / 2^BISECTION_STEPS) of a threshold, and ties at it, are
// kept; the host sampler keeps exactly k, so the two differ only on such near-ties.

const WG: u32 = 64u;
const BISECTION_STEPS: u32 = 30u;
const NEG_INF: f32 = -3.0e38;
const NOT_FINITE: u32 = 0xffffffffu;

struct Settings {
    n_penalty: u32,
    top_k: u32,
    greedy: u32,
    pad: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    uniform: f32,
}

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> penalty_ids: array<u32>;
@group(0) @binding(2) var<storage, read> settings: Settings;
@group(0) @binding(3) var<storage, read_write> result: array<u32>;
@group(0) @binding(4) var<uniform> params: Params;

var<workgroup> part_f: array<f32, WG>;
var<workgroup> part_u: array<u32, WG>;
var<workgroup> shared_f: f32;
var<workgroup> shared_u: u32;

// The chunk [start, end) of the vocabulary invocation `li` owns.
fn chunk(li: u32) -> vec2<u32> {
    let size = (params.count + WG - 1u) / WG;
    let start = min(li * size, params.count);
    return vec2<u32>(start, min(start + size, params.count));
}

// Sum of every invocation's `value`, in chunk order, the same in every invocation.
fn sum_f(li: u32, value: f32) -> f32 {
    part_f[li] = value;
    workgroupBarrier();
    if li == 0u {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) {
            total += part_f[i];
        }
        shared_f = total;
    }
    return workgroupUniformLoad(&shared_f);
}

fn sum_u(li: u32, value: u32) -> u32 {
    part_u[li] = value;
    workgroupBarrier();
    if li == 0u {
        var total = 0u;
        for (var i = 0u; i < WG; i++) {
            total += part_u[i];
        }
        shared_u = total;
    }
    return workgroupUniformLoad(&shared_u);
}

// How many logits are >= tau.
fn count_at_least(li: u32, tau: f32) -> u32 {
    let c = chunk(li);
    var n = 0u;
    for (var i = c.x; i < c.y; i++) {
        n += select(0u, 1u, logits[i] >= tau);
    }
    return sum_u(li, n);
}

// Untempered softmax mass (relative to the maximum `top`) of the logits >= tau.
fn mass_at_least(li: u32, tau: f32, top: f32) -> f32 {
    let c = chunk(li);
    var m = 0.0;
    for (var i = c.x; i < c.y; i++) {
        let l = logits[i];
        if l >= tau {
            m += exp(l - top);
        }
    }
    return sum_f(li, m);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32) {
    for (var i = li; i < settings.n_penalty; i += WG) {
        let id = penalty_ids[i];
        if id < params.count {
            let l = logits[id];
            logits[id] = select(l * settings.repetition_penalty, l / settings.repetition_penalty, l > 0.0);
        }
    }
    storageBarrier();
    workgroupBarrier();

    // Maximum (lowest id on ties) and minimum.
    let c = chunk(li);
    var best = NEG_INF;
    var best_id = 0u;
    var lowest = 3.0e38;
    var bad = 0u;
    for (var i = c.x; i < c.y; i++) {
        let l = logits[i];
        if l > best {
            best = l;
            best_id = i;
        }
        lowest = min(lowest, l);
        bad += select(1u, 0u, abs(l) <= 3.4e38);
    }
    if sum_u(li, bad) > 0u {
        if li == 0u {
            result[0] = NOT_FINITE;
        }
        return;
    }
    part_f[li] = best;
    part_u[li] = best_id;
    workgroupBarrier();
    if li == 0u {
        var top = NEG_INF;
        var top_id = 0u;
        for (var i = 0u; i < WG; i++) {
            if part_f[i] > top {
                top = part_f[i];
                top_id = part_u[i];
            }
        }
        shared_f = top;
        shared_u = top_id;
    }
    let top = workgroupUniformLoad(&shared_f);
    let top_id = workgroupUniformLoad(&shared_u);
    if settings.greedy != 0u {
        if li == 0u {
            result[0] = top_id;
        }
        return;
    }
    part_f[li] = lowest;
    workgroupBarrier();
    if li == 0u {
        var low = 3.0e38;
        for (var i = 0u; i < WG; i++) {
            low = min(low, part_f[i]);
        }
        shared_f = low;
    }
    let bottom = workgroupUniformLoad(&shared_f);

    // top-k: the largest tau with count(>= tau) >= k.
    var tau = bottom;
    if settings.top_k > 0u && settings.top_k < params.count {
        var lo = bottom;
        var hi = top;
        for (var step = 0u; step < BISECTION_STEPS; step++) {
            let mid = lo + (hi - lo) * 0.5;
            if count_at_least(li, mid) >= settings.top_k {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        tau = lo;
    }
    // top-p within the top-k set.
    if settings.top_p < 1.0 {
        let goal = settings.top_p * mass_at_least(li, tau, top);
        var lo = tau;
        var hi = top;
        for (var step = 0u; step < BISECTION_STEPS; step++) {
            let mid = lo + (hi - lo) * 0.5;
            if mass_at_least(li, mid, top) >= goal {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        tau = lo;
    }
    if settings.min_p > 0.0 {
        tau = max(tau, top + log(settings.min_p));
    }

    // Draw from the tempered softmax over the kept set, in id order.
    let inv_t = 1.0 / settings.temperature;
    var mine = 0.0;
    for (var i = c.x; i < c.y; i++) {
        let l = logits[i];
        if l >= tau {
            mine += exp((l - top) * inv_t);
        }
    }
    part_f[li] = mine;
    workgroupBarrier();
    if li == 0u {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) {
            total += part_f[i];
        }
        let goal = settings.uniform * total;
        // The chunk where the running mass passes the goal, then the token within it.
        var before = 0.0;
        var owner = WG - 1u;
        for (var i = 0u; i < WG; i++) {
            if before + part_f[i] > goal && part_f[i] > 0.0 {
                owner = i;
                break;
            }
            before += part_f[i];
        }
        let oc = chunk(owner);
        var picked = top_id;
        var running = before;
        for (var i = oc.x; i < oc.y; i++) {
            let l = logits[i];
            if l >= tau {
                picked = i;
                running += exp((l - top) * inv_t);
                if running > goal {
                    break;
                }
            }
        }
        result[0] = picked;
    }
}
