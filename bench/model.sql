-- The benchmark's model: customers joined to their aggregated orders (like the sample).
WITH o AS (
    SELECT customer_id,
           COUNT(*)        AS order_count,
           SUM(amount)     AS total_spent,
           MAX(ordered_at) AS last_order_at
    FROM orders
    GROUP BY customer_id
)
SELECT c.email,
       c.first_name,
       c.last_name,
       c.city,
       c.country_code,
       c.birth_date,
       c.newsletter,
       c.signed_up_at,
       c.churn_score,
       c.segment,
       COALESCE(o.order_count, 0)  AS order_count,
       COALESCE(o.total_spent, 0)  AS total_spent,
       o.last_order_at,
       CASE WHEN COALESCE(o.total_spent, 0) >= 5000 THEN 'gold'
            WHEN COALESCE(o.total_spent, 0) >= 1000 THEN 'silver'
            ELSE 'bronze' END      AS loyalty_tier
FROM customers c
LEFT JOIN o ON o.customer_id = c.customer_id
