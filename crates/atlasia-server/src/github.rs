//! The server's use of GitHub: building the client from `[github]`, and reading an issue
//! (title, body, labels, recent comments; all bounded) into a run created from it.

use crate::error::ApiError;
use crate::settings::GithubSettings;
use atlasia_core::NewRun;
use atlasia_core::run::{MAX_BODY_BYTES, MAX_TITLE_CHARS, PRIORITY_RANGE};
use atlasia_github::api::truncate;
use atlasia_github::{
    AppKey, CheckWait, Credentials, GithubClient, GithubConfig, GithubError, IssueContext, RepoName,
};
use atlasia_resilience::RetryPolicy;
use std::time::Duration;

/// The label that starts a bolt.
pub const RUN_LABEL: &str = "ai:run";

/// The client, or `None` when neither an App nor a token is configured. The App key is read
/// and checked here, so a bad key stops the start with a clear message.
pub fn client(s: &GithubSettings) -> Result<Option<GithubClient>, String> {
    let credentials = match (&s.app_id, &s.private_key_path, &s.installation_id, &s.token) {
        (Some(app_id), Some(path), Some(installation_id), _) => Credentials::App {
            app_id: app_id.to_string(),
            key: AppKey::from_file(path).map_err(|e| e.to_string())?,
            installation_id: *installation_id,
        },
        (_, _, _, Some(token)) => Credentials::Token(token.clone()),
        _ => return Ok(None),
    };
    let mut cfg = GithubConfig::new(credentials);
    cfg.api_url = s.api_url.clone();
    cfg.git_url = s.git_url.clone();
    cfg.timeout = Duration::from_millis(s.request_timeout_ms);
    cfg.retry = RetryPolicy {
        attempts: s.retry_attempts,
        ..RetryPolicy::default()
    };
    cfg.max_rate_limit_wait = Duration::from_millis(s.max_rate_limit_wait_ms);
    GithubClient::new(cfg)
        .map(Some)
        .map_err(|e| format!("GitHub client: {e}"))
}

/// The check-runs wait the settings ask for.
pub fn check_wait(s: &GithubSettings) -> CheckWait {
    CheckWait {
        total: Duration::from_millis(s.check_wait_ms),
        grace: Duration::from_millis(s.check_grace_ms),
        poll: Duration::from_millis(s.check_poll_ms),
        poll_max: Duration::from_millis(s.check_poll_max_ms.max(s.check_poll_ms)),
        ..CheckWait::default()
    }
}

/// `priority:N` (0–10) among `labels`, the first valid one.
pub fn label_priority<'a>(labels: impl IntoIterator<Item = &'a str>) -> Option<i32> {
    labels.into_iter().find_map(|l| {
        l.trim()
            .strip_prefix("priority:")
            .and_then(|n| n.trim().parse::<i32>().ok())
            .filter(|n| PRIORITY_RANGE.contains(n))
    })
}

/// Cuts a title to the run's limit, in characters.
pub fn clip_title(title: &str) -> String {
    title.trim().chars().take(MAX_TITLE_CHARS).collect()
}

/// The run body: the issue body, then the recent comments, within the run's byte limit.
pub fn compose_body(ctx: &IssueContext) -> String {
    let mut body = ctx.issue.body.replace('\0', "");
    if !ctx.comments.is_empty() {
        body.push_str("\n\n---\nRecent comments (oldest first):\n");
        for c in &ctx.comments {
            body.push_str(&format!("\n@{}:\n{}\n", c.author, c.body.replace('\0', "")));
        }
    }
    truncate(body, MAX_BODY_BYTES).0
}

/// For `POST /api/runs` with `owner/name`, an issue number and neither title nor body: fills
/// them (and the priority, when the request gave none) from the issue on GitHub.
pub async fn fill_from_issue(
    gh: &GithubClient,
    settings: &GithubSettings,
    new: &mut NewRun,
    priority_given: bool,
) -> Result<(), ApiError> {
    let (Some(number), Some(repo)) = (new.issue_number, RepoName::parse(&new.repo)) else {
        return Ok(());
    };
    if !new.title.is_empty() || !new.body.is_empty() {
        return Ok(());
    }
    let number = u64::try_from(number).unwrap_or_default();
    let ctx = gh
        .issue_context(&repo, number, settings.context_comments)
        .await
        .map_err(|e| match e {
            GithubError::NotFound { .. } => ApiError::Invalid {
                field: "issue_number".into(),
                message: format!("issue #{number} of {repo} was not found on GitHub"),
            },
            other => ApiError::Github(other),
        })?;
    new.title = clip_title(&ctx.issue.title);
    new.body = compose_body(&ctx);
    if !priority_given && let Some(p) = label_priority(ctx.issue.labels.iter().map(String::as_str))
    {
        new.priority = p;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_labels() {
        assert_eq!(label_priority(["bug", "priority:8"]), Some(8));
        assert_eq!(label_priority(["priority:11", "priority:0"]), Some(0));
        assert_eq!(label_priority(["priority:x"]), None);
    }
}
