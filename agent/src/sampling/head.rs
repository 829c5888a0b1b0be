//! Head sampling from the OpenTelemetry SDK's environment variables.

use super::ratio_keeps;
use crate::span::TraceId;

const SAMPLED: u8 = 0x01;

#[derive(Debug, Clone, PartialEq)]
pub enum HeadSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follows a remote caller's sampled flag; decides with the inner sampler otherwise.
    ParentBased(Box<HeadSampler>),
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SamplerConfigError {
    #[error(
        "OTEL_TRACES_SAMPLER={0:?} is not supported: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    Unknown(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?} is not a ratio between 0 and 1")]
    BadRatio(String),
}

impl HeadSampler {
    /// The SDK default is `parentbased_always_on`; a ratio defaults to 1.0.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, SamplerConfigError> {
        let name = get("OTEL_TRACES_SAMPLER")
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "parentbased_always_on".into());
        let ratio = || -> Result<f64, SamplerConfigError> {
            match get("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty()) {
                None => Ok(1.0),
                Some(text) => match text.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(SamplerConfigError::BadRatio(text)),
                },
            }
        };
        Ok(match name.as_str() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Self::ParentBased(Box::new(Self::AlwaysOn)),
            "parentbased_always_off" => Self::ParentBased(Box::new(Self::AlwaysOff)),
            "parentbased_traceidratio" => Self::ParentBased(Box::new(Self::TraceIdRatio(ratio()?))),
            _ => return Err(SamplerConfigError::Unknown(name)),
        })
    }

    /// `root_is_remote` and `root_flags` describe where the trace came from: a caller
    /// loupe does not see (whose flags arrived in `traceparent`), or a span loupe started.
    pub fn sampled(&self, trace_id: &TraceId, root_is_remote: bool, root_flags: u8) -> bool {
        match self {
            Self::AlwaysOn => true,
            Self::AlwaysOff => false,
            Self::TraceIdRatio(r) => ratio_keeps(trace_id, *r),
            Self::ParentBased(inner) => {
                if root_is_remote {
                    root_flags & SAMPLED != 0
                } else {
                    inner.sampled(trace_id, false, root_flags)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<HeadSampler, SamplerConfigError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HeadSampler::from_env(|k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_to_parentbased_always_on() {
        assert_eq!(
            parse(&[]).unwrap(),
            HeadSampler::ParentBased(Box::new(HeadSampler::AlwaysOn))
        );
    }

    #[test]
    fn parses_every_sampler() {
        assert_eq!(
            parse(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap(),
            HeadSampler::AlwaysOff
        );
        assert_eq!(
            parse(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ])
            .unwrap(),
            HeadSampler::TraceIdRatio(0.25)
        );
        assert_eq!(
            parse(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]).unwrap(),
            HeadSampler::ParentBased(Box::new(HeadSampler::TraceIdRatio(1.0)))
        );
        assert_eq!(
            parse(&[("OTEL_TRACES_SAMPLER", " ParentBased_Always_Off ")]).unwrap(),
            HeadSampler::ParentBased(Box::new(HeadSampler::AlwaysOff))
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            parse(&[("OTEL_TRACES_SAMPLER", "sometimes")]),
            Err(SamplerConfigError::Unknown(_))
        ));
        for bad in ["1.5", "-0.1", "half"] {
            assert!(matches!(
                parse(&[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", bad)
                ]),
                Err(SamplerConfigError::BadRatio(_))
            ));
        }
    }

    #[test]
    fn parent_based_follows_a_remote_caller() {
        let sampler = HeadSampler::ParentBased(Box::new(HeadSampler::AlwaysOff));
        let id = TraceId([9; 16]);
        assert!(sampler.sampled(&id, true, 0x01));
        assert!(!sampler.sampled(&id, true, 0x00));
        // A trace loupe started is decided by the inner sampler.
        assert!(!sampler.sampled(&id, false, 0x01));
        let on = HeadSampler::ParentBased(Box::new(HeadSampler::AlwaysOn));
        assert!(on.sampled(&id, false, 0x00));
        assert!(!on.sampled(&id, true, 0x00));
    }
}
