// A KV cache of f16 values: one word of the cache is four values as two u32, each a pair of
// IEEE halves (pack2x16float: the lower half is the first value). The kernels that read or
// write a cache index it in words, so they are the same for every cache type (kv_f32.wgsl).
alias KvWord = vec2<u32>;

fn kv_load(word: KvWord) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(word.x), unpack2x16float(word.y));
}

fn kv_store(values: vec4<f32>) -> KvWord {
    return vec2<u32>(pack2x16float(values.xy), pack2x16float(values.zw));
}
