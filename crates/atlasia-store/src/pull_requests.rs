//! The `pull_requests` record: one per run, written by the Writer when it opens the pull request
//! and rewritten on every loop-back (same branch, same record), so opening is idempotent.

use crate::pool::{acquire, on_pool};
use crate::{Store, StoreError};
use atlasia_core::Timestamp;
use serde::Serialize;

/// What the Writer opens or updates; the store adds the timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestDraft {
    /// The run the pull request belongs to (one per run).
    pub run_id: String,
    /// `local` or `github`.
    pub forge: String,
    /// The forge's number (GitHub), `None` on the local forge.
    pub number: Option<i64>,
    /// The forge's web address, when it has one.
    pub url: Option<String>,
    /// Title.
    pub title: String,
    /// Body (markdown).
    pub body: String,
    /// Branch merged into.
    pub base: String,
    /// The bolt's branch.
    pub head: String,
    /// `git diff --stat` of base..head.
    pub diff_stat: String,
    /// `open`, `merged` or `closed`.
    pub state: String,
}

/// A stored pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    pub run_id: String,
    pub forge: String,
    pub number: Option<i64>,
    pub url: Option<String>,
    pub title: String,
    pub body: String,
    pub base: String,
    pub head: String,
    pub diff_stat: String,
    pub state: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct PullRequestRow {
    run_id: String,
    forge: String,
    number: Option<i64>,
    url: Option<String>,
    title: String,
    body: String,
    base: String,
    head: String,
    diff_stat: String,
    state: String,
    created_at: i64,
    updated_at: i64,
}

impl From<PullRequestRow> for PullRequest {
    fn from(r: PullRequestRow) -> Self {
        PullRequest {
            run_id: r.run_id,
            forge: r.forge,
            number: r.number,
            url: r.url,
            title: r.title,
            body: r.body,
            base: r.base,
            head: r.head,
            diff_stat: r.diff_stat,
            state: r.state,
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
        }
    }
}

const COLUMNS: &str = "run_id, forge, number, url, title, body, base, head, diff_stat, state, \
                       created_at, updated_at";

/// `created_at` is kept on update: the record is the same pull request, revised.
const UPSERT: &str = "INSERT INTO pull_requests (run_id, forge, number, url, title, body, base, \
    head, diff_stat, state, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
    ON CONFLICT (run_id) DO UPDATE SET forge = excluded.forge, number = excluded.number, \
    url = excluded.url, title = excluded.title, body = excluded.body, base = excluded.base, \
    head = excluded.head, diff_stat = excluded.diff_stat, state = excluded.state, \
    updated_at = excluded.updated_at \
    RETURNING run_id, forge, number, url, title, body, base, head, diff_stat, state, \
    created_at, updated_at";

impl Store {
    /// Opens the run's pull request, or updates it in place when it exists. `NotFound("run")`
    /// when the run does not exist.
    pub async fn upsert_pull_request(
        &self,
        pr: &PullRequestDraft,
    ) -> Result<PullRequest, StoreError> {
        let now = Timestamp::now().0;
        let res: Result<PullRequestRow, sqlx::Error> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut conn = acquire!(self, p);
            sqlx::query_as(UPSERT)
                .bind(&pr.run_id)
                .bind(&pr.forge)
                .bind(pr.number)
                .bind(pr.url.as_deref().map(|u| self.clean(u).into_owned()))
                .bind(self.clean(&pr.title).into_owned())
                .bind(self.clean(&pr.body).into_owned())
                .bind(self.clean(&pr.base).into_owned())
                .bind(self.clean(&pr.head).into_owned())
                .bind(self.clean(&pr.diff_stat).into_owned())
                .bind(&pr.state)
                .bind(now)
                .fetch_one(&mut *conn)
                .await
        });
        match res {
            Ok(row) => Ok(row.into()),
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::NotFound("run"))
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// The run's pull request, if one was opened.
    pub async fn get_pull_request(&self, run_id: &str) -> Result<Option<PullRequest>, StoreError> {
        let row: Option<PullRequestRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            let mut q = sqlx::QueryBuilder::new("SELECT ");
            q.push(COLUMNS)
                .push(" FROM pull_requests WHERE run_id = ")
                .push_bind(run_id);
            q.build_query_as().fetch_optional(&mut *conn).await?
        });
        Ok(row.map(PullRequest::from))
    }
}
