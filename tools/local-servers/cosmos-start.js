// Starts @vercel/cosmosdb-server on 127.0.0.1 for the conformance suite.
// COSMOS_PORT=8081 node cosmos-start.js   (COSMOS_NO_SSL=1 for plain HTTP)
// The patch makes a read of a missing item answer 404 like Cosmos DB (the server answers 500).
const rd = require("@vercel/cosmosdb-server/lib/handler/read-document");
const original = rd.default;
rd.default = (account, req, res, params) => {
  try {
    return original(account, req, res, params);
  } catch (e) {
    if (!(e instanceof TypeError)) throw e;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system.," };
  }
};
const { createHttpsServer, createHttpServer } = require("@vercel/cosmosdb-server");
const port = parseInt(process.env.COSMOS_PORT || "8081", 10);
(process.env.COSMOS_NO_SSL ? createHttpServer : createHttpsServer)()
  .listen(port, "127.0.0.1", () => console.log(`cosmosdb-server ready on 127.0.0.1:${port}`));
