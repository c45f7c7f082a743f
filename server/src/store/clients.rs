use super::{Store, StoreError, StoreResult, Tx};
use crate::oauth::clients::{Client, GrantType};

const COLUMNS: &str = "id, name, secret_hash, is_public, redirect_uris, grant_types, scopes, \
     backchannel_logout_uri, first_party, may_introspect, exchange_audiences, id_token_alg, \
     created_at, updated_at, post_logout_redirect_uris";

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    name: String,
    secret_hash: Option<String>,
    is_public: i64,
    redirect_uris: String,
    grant_types: String,
    scopes: String,
    backchannel_logout_uri: Option<String>,
    first_party: i64,
    may_introspect: i64,
    exchange_audiences: String,
    id_token_alg: String,
    created_at: i64,
    updated_at: i64,
    post_logout_redirect_uris: String,
}

impl TryFrom<ClientRow> for Client {
    type Error = StoreError;

    fn try_from(r: ClientRow) -> Result<Self, StoreError> {
        let list = |text: &str, what: &str| -> Result<Vec<String>, StoreError> {
            serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("client {} {what}: {e}", r.id)))
        };
        let grant_types = list(&r.grant_types, "grant_types")?
            .iter()
            .map(|g| {
                GrantType::parse(g)
                    .ok_or_else(|| StoreError::Corrupt(format!("client {} grant {g:?}", r.id)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Client {
            redirect_uris: list(&r.redirect_uris, "redirect_uris")?,
            post_logout_redirect_uris: list(
                &r.post_logout_redirect_uris,
                "post_logout_redirect_uris",
            )?,
            exchange_audiences: list(&r.exchange_audiences, "exchange_audiences")?,
            grant_types,
            scopes: r
                .scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            id: r.id,
            name: r.name,
            is_public: r.is_public != 0,
            backchannel_logout_uri: r.backchannel_logout_uri,
            first_party: r.first_party != 0,
            may_introspect: r.may_introspect != 0,
            id_token_alg: r.id_token_alg,
            created_at: r.created_at,
            updated_at: r.updated_at,
            secret_hash: r.secret_hash,
        })
    }
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

pub async fn insert(tx: &mut Tx, c: &Client) -> StoreResult<()> {
    let grants: Vec<&str> = c.grant_types.iter().map(|g| g.as_str()).collect();
    sqlx::query(
        "INSERT INTO clients (id, name, secret_hash, is_public, redirect_uris, grant_types, scopes, \
         backchannel_logout_uri, first_party, may_introspect, exchange_audiences, id_token_alg, \
         created_at, updated_at, post_logout_redirect_uris) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&c.id)
    .bind(&c.name)
    .bind(&c.secret_hash)
    .bind(i64::from(c.is_public))
    .bind(json_list(&c.redirect_uris))
    .bind(json_list(&grants))
    .bind(c.scopes.join(" "))
    .bind(&c.backchannel_logout_uri)
    .bind(i64::from(c.first_party))
    .bind(i64::from(c.may_introspect))
    .bind(json_list(&c.exchange_audiences))
    .bind(&c.id_token_alg)
    .bind(c.created_at)
    .bind(c.updated_at)
    .bind(json_list(&c.post_logout_redirect_uris))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn find(store: &Store, id: &str) -> StoreResult<Option<Client>> {
    let sql = format!("SELECT {COLUMNS} FROM clients WHERE id = $1");
    let row: Option<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.reader())
        .await?;
    row.map(Client::try_from).transpose()
}

pub async fn find_tx(tx: &mut Tx, id: &str) -> StoreResult<Option<Client>> {
    let sql = format!("SELECT {COLUMNS} FROM clients WHERE id = $1");
    let row: Option<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(Client::try_from).transpose()
}

/// Every client, oldest first, for the staff listing.
pub async fn list(store: &Store, limit: i64, offset: i64) -> StoreResult<Vec<Client>> {
    let sql = format!("SELECT {COLUMNS} FROM clients ORDER BY created_at, id LIMIT $1 OFFSET $2");
    let rows: Vec<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .bind(offset)
        .fetch_all(store.reader())
        .await?;
    rows.into_iter().map(Client::try_from).collect()
}

/// The client, locked for a read-modify-write (PostgreSQL `FOR UPDATE`;
/// SQLite's IMMEDIATE transaction already holds the write lock).
pub async fn find_for_update(store: &Store, tx: &mut Tx, id: &str) -> StoreResult<Option<Client>> {
    let lock = super::users::for_update(store);
    let sql = format!("SELECT {COLUMNS} FROM clients WHERE id = $1{lock}");
    let row: Option<ClientRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(Client::try_from).transpose()
}

/// Replaces the redirect URIs and scopes.
pub async fn update_settings(
    tx: &mut Tx,
    id: &str,
    redirect_uris: &[String],
    scopes: &[String],
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE clients SET redirect_uris = $1, scopes = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(json_list(redirect_uris))
    .bind(scopes.join(" "))
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces a confidential client's secret hash.
pub async fn set_secret_hash(
    tx: &mut Tx,
    id: &str,
    secret_hash: &str,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE clients SET secret_hash = $1, updated_at = $2 WHERE id = $3 AND is_public = 0",
    )
    .bind(secret_hash)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
