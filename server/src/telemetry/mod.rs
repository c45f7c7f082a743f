//! Structured JSON logs with a stable schema, and Prometheus metrics.
//!
//! Log line schema: `{"ts", "level", "target", "msg", "request_id"?, "fields": {…}}`.
//! Fields come from the event and its enclosing spans (innermost wins);
//! every value passes through [`redact`] first.

pub mod metrics;
pub mod redact;

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber, span};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the JSON logger for the process. `level` is a `tracing` filter.
pub fn init(level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(JsonLayer)
        .try_init();
}

#[derive(Default)]
struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(
            field.name().to_string(),
            Value::String(redact::redact_field(field.name(), value)),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert_number(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert_number(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert_number(field, Value::Bool(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }
}

impl FieldMap {
    fn insert_number(&mut self, field: &Field, value: Value) {
        let value = if redact::is_secret_field(field.name()) {
            Value::String(redact::REDACTED.to_string())
        } else {
            value
        };
        self.0.insert(field.name().to_string(), value);
    }
}

struct JsonLayer;

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = FieldMap::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<FieldMap>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut merged = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FieldMap>() {
                    for (k, v) in &fields.0 {
                        merged.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut own = FieldMap::default();
        event.record(&mut own);
        merged.extend(own.0);
        let msg = merged
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        let request_id = merged.remove("request_id");
        let mut line = Map::new();
        line.insert(
            "ts".into(),
            Value::String(crate::clock::rfc3339_ms(crate::clock::Clock::now_ms(
                &crate::clock::SystemClock,
            ))),
        );
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_string()),
        );
        line.insert("msg".into(), msg);
        if let Some(id) = request_id {
            line.insert("request_id".into(), id);
        }
        if !merged.is_empty() {
            line.insert("fields".into(), Value::Object(merged));
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", Value::Object(line));
    }
}
