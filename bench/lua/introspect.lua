-- POST /introspect (RFC 7662) as the gateway client.  BENCH_ACCEPT selects
-- JSON (unset) or application/token-introspection+jwt (RFC 9701).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
form_post("token=" .. env("BENCH_TOKEN") .. "&token_type_hint=access_token")
