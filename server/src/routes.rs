//! The HTTP routes: the router (authentication, body limit, metrics around every route) and
//! one handler per endpoint. Handlers only translate between the OpenAI wire format and the
//! engine; they never call plugins or read files.

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use pio_host::{
    Capability, CompressionRequest, CompressionScope, EmbedRequest, ErrorKind, KeepAlive,
};
use serde_json::{json, Value};

use pio_host::{HostError, PluginState, PluginSummary};

use super::{
    auth::require_api_key,
    body::JsonBody,
    complete, drain,
    engine::{Admit, EngineError, Priority},
    error::{ApiError, ErrorLabel},
    openai::{
        encode_embedding, ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
        EmbeddingRequest, Limits, TokenizeRequest,
    },
    plugins::Readiness,
    App,
};

/// Header giving a request's priority when the body has no `priority` field.
const PRIORITY_HEADER: &str = "x-priority";

/// The server's router.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.config.body_limit_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_ready))
        .route_layer(middleware::from_fn_with_state(app.clone(), drain::track))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/admin/plugins", get(admin_plugins))
        .route("/admin/plugins/{name}/compress", post(compress))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_api_key))
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(live))
        .fallback(|| async { ApiError::not_found("unknown_route", "no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), count_response))
        .with_state(app)
}

/// Middleware: counts every response by route and status, and errors by type and code.
async fn count_response(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    app.metrics.response(&route, response.status().as_u16());
    if let Some(label) = response.extensions().get::<ErrorLabel>() {
        app.metrics.error(label.kind, label.code);
    }
    response
}

/// Middleware of the model routes: 503 while the plugins are still loading (rather than a
/// 404 for a model that is about to be served).
async fn require_ready(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    match app.plugins.readiness() {
        Readiness::Loading => ApiError::unavailable(
            "loading",
            "the server is still loading its plugins; retry when GET /health answers 200",
        )
        .into_response(),
        Readiness::Ready | Readiness::Failed(_) => next.run(request).await,
    }
}

/// A JSON body with `status`.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The priority of a request: its `priority` field, else the `x-priority` header.
pub(crate) fn priority(field: Option<i64>, headers: &HeaderMap) -> Result<Priority, ApiError> {
    let level = match field {
        Some(level) => level,
        None => match headers.get(PRIORITY_HEADER) {
            None => 0,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::invalid("priority", "the x-priority header must be an integer")
                })?,
        },
    };
    Ok(Priority::from_level(level))
}

/// How a request is admitted: its priority (see [`priority`]) and its `keep_alive`, which
/// must be a duration string or a number of seconds (else 400).
pub(crate) fn admit(priority: Priority, keep_alive: Option<&Value>) -> Result<Admit, ApiError> {
    let keep_alive = match keep_alive {
        None | Some(Value::Null) => None,
        Some(Value::Number(seconds)) => Some(
            seconds
                .as_f64()
                .and_then(KeepAlive::from_seconds)
                .ok_or_else(|| ApiError::invalid("keep_alive", "not a finite number"))?,
        ),
        Some(Value::String(text)) => {
            Some(KeepAlive::parse(text).map_err(|e| ApiError::invalid("keep_alive", e))?)
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "keep_alive",
                format!("must be a duration string or a number of seconds, got {other}"),
            ))
        }
    };
    Ok(Admit {
        priority,
        keep_alive,
    })
}

impl App {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            default_max_tokens: self.config.default_max_tokens,
            max_tokens_limit: self.config.max_tokens_limit,
        }
    }
}

/// `GET /health/live`: 200 while the process answers at all (Kubernetes' liveness probe: a
/// server that is loading or draining is alive).
async fn live() -> Response {
    json_response(StatusCode::OK, &json!({"status": "alive"}))
}

/// `GET /health` and `GET /health/ready` (readiness): 503 while loading, draining or with
/// nothing to serve, else 200.
async fn health(State(app): State<Arc<App>>) -> Response {
    if app.drain.is_draining() {
        let body = json!({
            "status": "draining",
            "message": "shutting down: requests in flight finish, no new ones are taken",
            "in_flight": app.drain.in_flight(),
        });
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let plugins = app.manager.list_plugins();
    let active: Vec<&str> = plugins
        .iter()
        .filter(|p| p.is_available())
        .map(|p| p.id.as_str())
        .collect();
    // Failed plugins (a refused folder, a plugin whose worker crashed too often) do not make
    // the server unready while another serves, but their reasons are part of the detail.
    let failed: Vec<Value> = plugins
        .iter()
        .filter_map(|p| match &p.state {
            PluginState::Failed(reason) => Some(json!({"plugin": p.id, "reason": reason})),
            _ => None,
        })
        .collect();
    let (status, body) = match app.plugins.readiness() {
        Readiness::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading", "plugins": active}),
        ),
        Readiness::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "message": reason}),
        ),
        Readiness::Ready if active.is_empty() => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "unavailable",
                "message": "no plugin is active",
                "plugins": active,
                "failed": failed,
            }),
        ),
        Readiness::Ready => (
            StatusCode::OK,
            json!({"status": "ok", "plugins": active, "failed": failed}),
        ),
    };
    json_response(status, &body)
}

/// Whether `plugin` is the very instance its name resolves to: same version *and* reload
/// generation (a failed or retiring attempt may share the version of the one serving).
fn serves(app: &App, plugin: &PluginSummary) -> bool {
    app.manager
        .info(&plugin.manifest.name)
        .is_ok_and(|serving| {
            serving.id == plugin.id
                && serving.generation == plugin.generation
                && serving.is_available()
                && !serving.retiring
        })
}

/// `GET /v1/models`: every active plugin; the instance serving a name is listed by the bare
/// name, other active versions as `name@version`.
async fn models(State(app): State<Arc<App>>) -> Response {
    let data: Vec<Value> = app
        .manager
        .list_active_plugins()
        .into_iter()
        // A retiring instance only finishes the sequences it has: requests to it would go to
        // whatever serves its name now.
        .filter(|p| !p.retiring)
        .map(|p| {
            let name = &p.manifest.name;
            let serving = serves(&app, &p);
            let capabilities: Vec<&str> = p
                .metadata
                .iter()
                .flat_map(|m| m.capabilities.iter().map(|c| c.as_str()))
                .collect();
            json!({
                "id": if serving { name.clone() } else { p.id.clone() },
                "object": "model",
                "created": app.started,
                "owned_by": "pio",
                "plugin": p.id,
                "version": p.manifest.version.to_string(),
                "generation": p.generation,
                "capabilities": capabilities,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    complete::chat(&app, &headers, request).await
}

/// `POST /v1/completions`.
async fn completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    complete::completion(&app, &headers, request).await
}

/// `POST /v1/embeddings`.
async fn embeddings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let inputs = request.inputs()?;
    let encoding = request.encoding()?;
    let priority = admit(
        priority(request.priority, &headers)?,
        request.keep_alive.as_ref(),
    )?;
    let embed = EmbedRequest {
        inputs: inputs.to_vec(),
    };
    let served = app
        .engine
        .call(&request.model, priority, move |manager, model| {
            manager.embed(model, &embed)
        })
        .await?;
    let data: Vec<Value> = served
        .response
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            json!({"object": "embedding", "index": index, "embedding": encode_embedding(vector, encoding)})
        })
        .collect();
    let tokens = served.response.prompt_tokens;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    ))
}

/// `POST /tokenize`: `{"tokens": [...], "count": n}`.
async fn tokenize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let priority = priority(None, &headers)?;
    let TokenizeRequest {
        model,
        prompt,
        add_special_tokens,
    } = request;
    let model = text_model(&app, model)?;
    let tokens = app
        .engine
        .call(&model, priority, move |manager, model| {
            manager.tokenize(model, &prompt, add_special_tokens)
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"tokens": tokens, "count": tokens.len()}),
    ))
}

/// `POST /detokenize`: `{"prompt": text}`.
async fn detokenize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let priority = priority(None, &headers)?;
    let DetokenizeRequest { model, tokens } = request;
    let model = text_model(&app, model)?;
    let answer = app
        .engine
        .call(&model, priority, move |manager, model| {
            if let Some(vocab) = vocab_size(manager, model) {
                let outside = tokens.iter().enumerate().find(|(_, &t)| u64::from(t) >= vocab);
                if let Some((i, token)) = outside {
                    return Ok(Err(ApiError::invalid(
                        "tokens",
                        format!(
                            "token id {token} (tokens[{i}]) is outside the vocabulary of {vocab} tokens"
                        ),
                    )));
                }
            }
            manager.detokenize(model, &tokens).map(Ok)
        })
        .await;
    match answer {
        Ok(Ok(text)) => Ok(json_response(StatusCode::OK, &json!({"prompt": text}))),
        Ok(Err(error)) => Err(error),
        // The plugin refused the ids (say, one it has no text for): the client's mistake.
        Err(EngineError::Host(HostError::Plugin { error, .. }))
            if error.kind == ErrorKind::InvalidInput =>
        {
            Err(ApiError::invalid("tokens", error.message.to_string()))
        }
        Err(error) => Err(error.into()),
    }
}

/// The vocabulary size the plugin `model` reports in its stats details (`vocab_size`), if it
/// does. Runs on the plugin's scheduler thread, like every plugin call.
fn vocab_size(manager: &pio_host::PluginManager, model: &str) -> Option<u64> {
    tokenizer_details(manager, model)?
        .get("vocab_size")?
        .as_u64()
}

/// The stats details of plugin `model`, where plugins report their tokenizer's facts.
fn tokenizer_details(manager: &pio_host::PluginManager, model: &str) -> Option<Value> {
    let stats = manager.stats(model).ok()?;
    serde_json::from_str(&stats.details_json).ok()
}

/// The model a tokenizer route names, or when it names none, the one text plugin served (as
/// vLLM's routes and the clients written for them, such as lm-eval's remote tokenizer, expect).
fn text_model(app: &App, model: Option<String>) -> Result<String, ApiError> {
    if let Some(model) = model {
        return Ok(model);
    }
    let text_plugins: Vec<String> = app
        .manager
        .list_active_plugins()
        .into_iter()
        .filter(|p| !p.retiring)
        .filter(|p| {
            p.metadata
                .as_ref()
                .is_some_and(|m| m.has(Capability::TextGeneration))
        })
        .map(|p| p.manifest.name)
        .collect();
    match text_plugins.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ApiError::invalid("model", "no text plugin is served")),
        several => Err(ApiError::invalid(
            "model",
            format!(
                "model is required when several text plugins are served ({})",
                several.join(", ")
            ),
        )),
    }
}

/// Query of `GET /tokenizer_info`.
#[derive(Debug, serde::Deserialize)]
struct TokenizerInfoQuery {
    model: Option<String>,
}

/// `GET /tokenizer_info[?model=NAME]`: the facts a client needs to tokenize for the model
/// itself (vLLM's route; lm-eval's remote tokenizer reads it): `eos_token` and `vocab_size`
/// where the plugin reports them, else `null`.
async fn tokenizer_info(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<TokenizerInfoQuery>,
) -> Result<Response, ApiError> {
    let priority = priority(None, &headers)?;
    let model = text_model(&app, query.model)?;
    let details = app
        .engine
        .call(&model, priority, |manager, model| {
            Ok(tokenizer_details(manager, model).unwrap_or(Value::Null))
        })
        .await?;
    let fact = |key: &str| details.get(key).cloned().unwrap_or(Value::Null);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "model": model,
            "eos_token": fact("eos_token"),
            "bos_token": fact("bos_token"),
            "pad_token": Value::Null,
            "vocab_size": fact("vocab_size"),
        }),
    ))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let ready = f64::from(u8::from(app.plugins.readiness() == Readiness::Ready));
    let mut gauges = app.engine.gauges();
    gauges.extend(super::memory::gauges(&app.manager));
    let mut counters = super::memory::counters(&app.manager);
    let (device_gauges, device_counters) = super::devices::samples(&app.engine, &app.manager);
    gauges.extend(device_gauges);
    counters.extend(device_counters);
    gauges.push(super::metrics::GaugeSample {
        name: "pio_ready",
        help: "1 once the initial plugin load is done.",
        labels: Vec::new(),
        value: ready,
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&gauges, &counters),
    )
        .into_response()
}

/// `GET /admin/plugins`: every plugin with version, state, generation, capabilities and queue,
/// plus the last reload events. `role` tells the instances of a name apart: `serving` (the one
/// its name resolves to; `serving: true`), `retiring` (replaced or unloaded, finishing its open
/// sequences; `retiring: true`), `failed` (an attempt that failed, with its `reason`),
/// `available` (another active version, reachable as `name@version`) or `inactive`. `queued`
/// and `active_sequences` are those of the name's queue; `open_sequences` this instance's.
async fn admin_plugins(State(app): State<Arc<App>>) -> Response {
    let plugins: Vec<Value> = app
        .manager
        .list_plugins()
        .into_iter()
        .map(|p| {
            let (state, reason) = match &p.state {
                PluginState::Failed(reason) => ("failed".to_owned(), Some(reason.clone())),
                state => (state.to_string(), None),
            };
            let serving = serves(&app, &p);
            let role = if serving {
                "serving"
            } else if p.retiring {
                "retiring"
            } else if reason.is_some() {
                "failed"
            } else if p.state == PluginState::Active {
                // Another version of the name, reachable as `name@version`.
                "available"
            } else if p.swapped_out {
                "swapped_out"
            } else {
                "inactive"
            };
            let capabilities: Vec<&str> = p
                .metadata
                .iter()
                .flat_map(|m| m.capabilities.iter().copied().map(Capability::as_str))
                .collect();
            let lane = app.engine.status(&p.manifest.name).unwrap_or_default();
            json!({
                "id": p.id,
                "name": p.manifest.name,
                "version": p.manifest.version.to_string(),
                "generation": p.generation,
                "state": state,
                "reason": reason,
                "role": role,
                "serving": serving,
                "retiring": p.retiring,
                "capabilities": capabilities,
                "folder": p.dir,
                "queued": lane.queued,
                "active_sequences": lane.active,
                "open_sequences": p.open_sequences,
                "memory": super::memory::plugin_json(&p),
                // The stats the scheduler caches are the serving instance's.
                "devices": match serving {
                    true => super::devices::plugin_json(&app.engine, &p),
                    false => Value::Null,
                },
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"plugins": plugins, "events": app.plugins.events()}),
    )
}

/// The body of `POST /admin/plugins/{name}/compress`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CompressBody {
    /// `weights` or `kv_cache`.
    scope: String,
    /// The target format (`q8_0`, `f16`, ...).
    format: String,
}

/// `POST /admin/plugins/{name}/compress` with `{"scope": "weights" | "kv_cache", "format":
/// F}`: the plugin stores those tensors in F from then on and answers
/// `{"plugin", "compression": {"method", "ratio", "categories", "quality"}}` (bytes before and
/// after per category, the measured quality change). Runs in the plugin's queue like a request;
/// a plugin refuses it while it has batched sequences open, and refuses a format it cannot
/// store with the ones it can (400).
async fn compress(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CompressBody>,
) -> Result<Response, ApiError> {
    let scope = match body.scope.as_str() {
        "weights" => CompressionScope::Weights,
        "kv_cache" => CompressionScope::KvCache,
        other => {
            return Err(ApiError::invalid(
                "scope",
                format!("unknown scope '{other}': expected \"weights\" or \"kv_cache\""),
            ))
        }
    };
    let request = CompressionRequest {
        scope,
        format: body.format,
    };
    let priority = priority(None, &headers)?;
    let report = app
        .engine
        .call(&name, priority, move |manager, model| {
            manager.compress(model, &request)
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"plugin": name, "compression": super::memory::compression_json(&report)}),
    ))
}
