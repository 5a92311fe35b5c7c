//! A model written in Rust, served with the whole `mldeploy` command line.
//!
//! It scores the sentiment of short texts by counting words of a small lexicon: trivial on
//! purpose, so what shows is how a model plugs in: a schema the server validates against,
//! `predict` with typed outputs, `feedback` whose figures cover every worker (shared slots), a
//! custom route, a custom metric and an extra event topic.
//!
//! Run it: `cargo run -p example-custom-model -- serve --workers 2`, then
//! `curl -s localhost:5000/api/ml/predict -d '{"data": [["what a great day"]], "names": ["text"]}'`.

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use mldeploy_model::{
    Column, CustomRoute, Datatype, Dtype, Feature, FeedbackInput, LoadContext, MetricDesc, MetricKind,
    MetricValue, MetricsSink, Model, ModelError, ModelInfo, Output, PredictInput, Response, Role,
    RouteResponse, SharedSlots, Target, Tensor, TensorSpec, Values,
};
use serde_json::json;

const POSITIVE: &[&str] = &["good", "great", "excellent", "happy", "love", "nice", "fast"];
const NEGATIVE: &[&str] = &["bad", "awful", "terrible", "sad", "hate", "slow", "broken"];

/// Shared slots used by this model: feedback rows seen, and rows predicted right.
const SLOT_SEEN: usize = 0;
const SLOT_RIGHT: usize = 1;

struct Lexicon {
    info: ModelInfo,
    shared: SharedSlots,
    metrics: Arc<dyn MetricsSink>,
}

fn label_of(text: &str) -> (&'static str, f64) {
    let (mut score, mut words) = (0i64, 0usize);
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        words += 1;
        let w = word.to_ascii_lowercase();
        score += i64::from(POSITIVE.contains(&w.as_str())) - i64::from(NEGATIVE.contains(&w.as_str()));
    }
    let score = if words == 0 { 0.0 } else { score as f64 / words as f64 };
    let label = if score > 0.0 {
        "positive"
    } else if score < 0.0 {
        "negative"
    } else {
        "neutral"
    };
    (label, score)
}

/// The text column of a validated table (the schema has exactly one category feature).
fn texts(input: Option<&mldeploy_model::Table>) -> Result<&[String], ModelError> {
    match input.and_then(|t| t.columns.first()) {
        Some(Column::Category(texts)) => Ok(texts),
        _ => Err(ModelError::Internal("the schema promised one text column".into())),
    }
}

impl Model for Lexicon {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let texts = texts(input.table.as_ref())?;
        let mut labels = Vec::with_capacity(texts.len());
        let mut scores = Vec::with_capacity(texts.len());
        for text in texts {
            let (label, score) = label_of(text);
            self.metrics.counter_add("example_sentiment_predictions_total", &[label], 1.0);
            labels.push(label);
            scores.push(score);
        }
        // Typed outputs: ml-deploy's answer shows the labels as `y_predicted` and the scores
        // by name; the V2 protocol answers both as tensors.
        let n = labels.len();
        Ok(Response {
            target: Target::outputs(vec![
                Output {
                    name: "label".into(),
                    role: Role::Labels,
                    tensor: Tensor {
                        datatype: Datatype::Bytes,
                        shape: vec![n],
                        values: Values::Text(labels.iter().map(|l| l.to_string()).collect()),
                    },
                },
                Output { name: "score".into(), role: Role::Other, tensor: Tensor::fp64(scores) },
            ]),
            input: Some(json!(texts)),
            list_metrics: Vec::new(),
            // Besides `predict`, every prediction also goes to this topic when Kafka is on.
            topics: vec!["sentiment".into()],
        })
    }

    fn supports_feedback(&self) -> bool {
        true
    }

    fn feedback(&self, input: &FeedbackInput) -> Result<Response, ModelError> {
        let texts = texts(input.table.as_ref())?;
        let truth: Vec<String> = serde_json::from_value(input.y_true.clone())
            .map_err(|_| ModelError::BadRequest("y_true must be a list of labels".into()))?;
        if truth.len() != texts.len() {
            return Err(ModelError::BadRequest("y_true needs one label per row of data".into()));
        }
        let predicted: Vec<&str> = texts.iter().map(|t| label_of(t).0).collect();
        let right = predicted.iter().zip(&truth).filter(|(p, t)| **p == t.as_str()).count();
        self.shared.add(SLOT_SEEN, truth.len() as u64);
        self.shared.add(SLOT_RIGHT, right as u64);
        Ok(Response {
            target: Target::Json(json!({ "y_true": truth, "y_predicted": predicted })),
            input: Some(json!(texts)),
            list_metrics: vec![MetricValue::gauge("Accuracy", self.accuracy())],
            topics: Vec::new(),
        })
    }

    fn routes(&self) -> Vec<CustomRoute> {
        vec![CustomRoute {
            methods: vec!["GET".into()],
            path: "/lexicon".into(),
            handler: Arc::new(|_req| {
                Ok(RouteResponse::json(200, &json!({ "positive": POSITIVE, "negative": NEGATIVE })))
            }),
        }]
    }

    fn metrics(&self) -> Vec<MetricDesc> {
        vec![MetricDesc {
            name: "example_sentiment_predictions_total".into(),
            help: "Texts scored, by predicted label.".into(),
            kind: MetricKind::Counter,
            label_names: vec!["label".into()],
        }]
    }
}

impl Lexicon {
    /// Accuracy over the feedback every worker has received.
    fn accuracy(&self) -> f64 {
        let seen = self.shared.get(SLOT_SEEN);
        if seen == 0 {
            0.0
        } else {
            self.shared.get(SLOT_RIGHT) as f64 / seen as f64
        }
    }
}

fn load(_path: Option<&Path>, ctx: &LoadContext) -> Result<Arc<dyn Model>, ModelError> {
    let info = ModelInfo {
        name: "sentiment-lexicon".into(),
        version: "1.0.0".into(),
        kind: "custom".into(),
        features: vec![Feature {
            name: "text".into(),
            dtype: Dtype::Category,
            values: None,
            allow_nan: false,
            missing: false,
        }],
        outputs: json!({ "labels": ["negative", "neutral", "positive"] }),
        sample: json!({ "data": [["what a great day"]], "names": ["text"] }),
        output_tensors: vec![
            TensorSpec { name: "label".into(), datatype: Datatype::Bytes, shape: vec![-1] },
            TensorSpec { name: "score".into(), datatype: Datatype::Fp64, shape: vec![-1] },
        ],
        ..ModelInfo::default()
    };
    Ok(Arc::new(Lexicon { info, shared: ctx.shared, metrics: Arc::clone(&ctx.metrics) }))
}

/// The allocator the `mldeploy` command uses (jemalloc); a custom server should set it too.
#[global_allocator]
static ALLOCATOR: mldeploy_server::Allocator = mldeploy_server::Allocator;

fn main() -> ExitCode {
    mldeploy_server::run_cli(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_lexicon() {
        assert_eq!(label_of("What a GREAT day").0, "positive");
        assert_eq!(label_of("slow and broken, but nice").0, "negative");
        assert_eq!(label_of("").0, "neutral");
    }
}
