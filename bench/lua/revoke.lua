-- POST /revoke (RFC 7009) as the token's own client.  The token is revoked by
-- the first request; every later one is the 200 no-op for a revoked token.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
form_post("token=" .. env("BENCH_TOKEN") .. "&token_type_hint=access_token")
