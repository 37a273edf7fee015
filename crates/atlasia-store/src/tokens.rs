//! API tokens. Only a SHA-256 hash of each token is stored: the tokens are long random strings,
//! so a fast hash is enough (no password stretching needed) and lookups stay cheap.

use crate::pool::{acquire, on_pool};
use crate::{Store, StoreError};
use atlasia_core::{Role, Timestamp};
use serde::Serialize;

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    role: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;

    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(ApiToken {
            role: r.role.parse().map_err(StoreError::Corrupt)?,
            id: r.id,
            name: r.name,
            created_at: Timestamp(r.created_at),
            last_used_at: r.last_used_at.map(Timestamp),
            revoked_at: r.revoked_at.map(Timestamp),
        })
    }
}

/// Which column identifies the token to revoke.
#[derive(Clone, Copy)]
enum TokenKey {
    Id,
    Name,
}

const COLUMNS: &str = "SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_tokens";

impl Store {
    /// Stores a token by its hash. `Conflict` when an active token already has that name.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
    ) -> Result<ApiToken, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = Timestamp::now().0;
        let res = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut conn = acquire!(self, p);
            sqlx::query(
                "INSERT INTO api_tokens (id, name, role, token_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&id)
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        });
        match res.map_err(|e| self.map_err(e)) {
            Ok(_) => Ok(ApiToken {
                id,
                name: name.to_owned(),
                role,
                created_at: Timestamp(now),
                last_used_at: None,
                revoked_at: None,
            }),
            Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(format!(
                "an active token named '{name}' already exists"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The active token with this hash, if any. Marks it used (at most once a minute, so reads
    /// stay reads under load).
    pub async fn find_token(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let row: Option<TokenRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            let mut q = sqlx::QueryBuilder::new(COLUMNS);
            q.push(" WHERE token_hash = ")
                .push_bind(token_hash)
                .push(" AND revoked_at IS NULL");
            q.build_query_as().fetch_optional(&mut *conn).await?
        });
        let Some(token) = row.map(ApiToken::try_from).transpose()? else {
            return Ok(None);
        };
        let now = Timestamp::now().0;
        if token.last_used_at.is_none_or(|t| now - t.0 > 60_000) {
            on_pool!(self, |p| {
                let mut conn = acquire!(self, p);
                sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&token.id)
                    .execute(&mut *conn)
                    .await?;
            });
        }
        Ok(Some(token))
    }

    /// Every token, newest first, revoked ones included.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows: Vec<TokenRow> = on_pool!(self, |p| {
            let mut conn = acquire!(self, p);
            let mut q = sqlx::QueryBuilder::new(COLUMNS);
            q.push(" ORDER BY id DESC");
            q.build_query_as().fetch_all(&mut *conn).await?
        });
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    /// Revokes the active token with this id, or else the active token with this name (an id
    /// match wins, so a token named like another's id cannot take both down).
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<ApiToken, StoreError> {
        for column in [TokenKey::Id, TokenKey::Name] {
            if let Some(t) = self.revoke_where(column, id_or_name).await? {
                return Ok(t);
            }
        }
        Err(StoreError::NotFound("token"))
    }

    async fn revoke_where(
        &self,
        key: TokenKey,
        value: &str,
    ) -> Result<Option<ApiToken>, StoreError> {
        let now = Timestamp::now().0;
        let row: Option<TokenRow> = on_pool!(self, |p| {
            let _permit = self.write_permit().await?;
            let mut conn = acquire!(self, p);
            let mut q = sqlx::QueryBuilder::new("UPDATE api_tokens SET revoked_at = ");
            q.push_bind(now)
                .push(match key {
                    TokenKey::Id => " WHERE id = ",
                    TokenKey::Name => " WHERE name = ",
                })
                .push_bind(value)
                .push(
                    " AND revoked_at IS NULL \
                     RETURNING id, name, role, created_at, last_used_at, revoked_at",
                );
            q.build_query_as().fetch_optional(&mut *conn).await?
        });
        row.map(ApiToken::try_from).transpose()
    }
}
