local config = require "sluice.config"

describe("sluice.config", function()
  before_each(function() config.values = {} end)

  it("hands checked values to the setter", function()
    local got = {}
    config.apply({ heartbeat = 5, history = 10, cors = { "http://a" } }, function(k, v) got[k] = v end)
    assert.same({ heartbeat = 5, history = 10 }, got)
    assert.same({ "http://a" }, config.values.cors)
  end)

  it("names an unknown key or a value of the wrong type, and changes nothing", function()
    local got = {}
    local set = function(k, v) got[k] = v end
    assert.has_error(function() config.apply({ nope = 1 }, set) end, "unknown configuration key 'nope'")
    assert.has_error(function() config.apply({ heartbeat = 1, history = "x" }, set) end,
      "configuration key 'history' must be a whole number of events, got the string \"x\"")
    assert.has_error(function() config.apply({ queue_limit = -1 }, set) end)
    assert.has_error(function() config.apply("x", set) end)
    assert.same({}, got)
  end)

  it("takes a redis:// or unix:// URL for the Redis engine", function()
    local got = {}
    local set = function(k, v) got[k] = v end
    config.apply({ redis = "redis://127.0.0.1:6379/1" }, set)
    config.apply({ redis = "unix:///run/redis.sock" }, set)
    assert.equal("unix:///run/redis.sock", got.redis)
    assert.has_error(function() config.apply({ redis = "http://h" }, set) end,
      "configuration key 'redis' must be a redis:// or unix:// URL, got the string \"http://h\"")
    assert.has_error(function() config.apply({ redis = 6379 }, set) end)
  end)

  it("answers CORS origins", function()
    assert.is_nil(config.cors_origin("http://a"))
    config.values.cors = "*"
    assert.equal("*", config.cors_origin(nil))
    config.values.cors = { "http://a", "http://b" }
    assert.equal("http://b", config.cors_origin("http://b"))
    assert.is_nil(config.cors_origin("http://c"))
    config.values.cors = "http://a"
    assert.equal("http://a", config.cors_origin("http://a"))
    assert.is_nil(config.cors_origin("http://evil"))
  end)
end)
