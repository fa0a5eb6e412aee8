// A KV cache of f32 values: one word of the cache is four values (see kv_f16.wgsl).
alias KvWord = vec4<f32>;

fn kv_load(word: KvWord) -> vec4<f32> {
    return word;
}

fn kv_store(values: vec4<f32>) -> KvWord {
    return values;
}
