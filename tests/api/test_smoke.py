async def test_register_and_me(client, register):
    acct = await register(name="John Doe")
    r = await client.get("/api/v1/auth/me", headers=acct.headers)
    assert r.status_code == 200
    assert r.json()["data"]["email"] == acct.email
